# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Blob upload sessions (POST, PATCH, PUT, DELETE /v2/NAME/blobs/uploads/...): their state machine, the
spool each writes to and the budget they share, layers decoded while they arrive, idle sessions freed.
A finished upload is handed to the writer (writer.py), which verifies and stores it.

May import _errors, _format, _storage, _codecs and the rest of _registry.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from typing import Optional, Tuple

from .._codecs import DecodeLimit, SpooledLayer, looks_like_layer, spool_layer
from .._errors import FormatError
from .._format.keys import DIGEST_ALGORITHMS, split_digest
from .._ops.leases import drop_lease
from .._storage.base import unlink_quietly
from .routes import ApiError


CHUNK = 1 << 20
HEAD = 512                      # bytes that tell a layer (gzip, zstd or tar magic) from other blobs
UPLOAD_IDLE_TTL = 600.0         # an upload nothing was sent to for this long is abandoned: its spool file goes
MAX_UPLOADS = 1000              # uploads in progress at once (each holds a spool file)
CLAIM_TTL = 3600.0              # a stored blob no manifest claimed this long loses its lease (prune may take it)
MAX_DECODERS = 16               # layers decoded while they arrive; more wait for their last byte


class _LayerDecoder:
    """Decodes a layer from an upload's spool file while the client is still sending it, so that the
    upload's last byte is followed by a store, not by a decode. The spool file holds what arrived:
    the decoder follows it and never holds the writer back."""

    def __init__(self, path: str, what: str, encoding: str, spool_dir: str, slots: threading.Semaphore,
                 limit: DecodeLimit):
        self._file = open(path, "rb")
        self._written = 0
        self._ended = False
        self._grown = threading.Condition()
        self._slots = slots
        self.result: Optional[SpooledLayer] = None      # set when the whole blob decoded
        self._thread = threading.Thread(target=self._run, args=(what, encoding, spool_dir, limit), daemon=True,
                                        name="decode-upload")
        self._thread.start()

    def grew(self, size: int) -> None:
        with self._grown:
            self._written = size
            self._grown.notify()

    def read(self, n: int) -> bytes:
        with self._grown:
            while self._file.tell() >= self._written and not self._ended:
                self._grown.wait()
            available = self._written - self._file.tell()
        return self._file.read(min(n, available)) if available > 0 else b""

    def _run(self, what: str, encoding: str, spool_dir: str, limit: DecodeLimit) -> None:
        try:
            self.result = spool_layer(self, what, encoding, spool_dir, limit)
        except Exception:  # noqa: BLE001  not a layer after all (a bomb, or no room): stored as pushed only
            self.result = None
        finally:
            self._file.close()
            self._slots.release()

    def end(self) -> Optional[SpooledLayer]:
        """The upload is complete (or abandoned): the decoded layer of everything written, if it decoded."""
        with self._grown:
            self._ended = True
            self._grown.notify()
        self._thread.join()
        return self.result

    def discard(self) -> None:
        spooled = self.end()
        if spooled is not None:
            unlink_quietly(spooled.path)


class _Upload:
    def __init__(self, name: str, path: str, now: float):
        self.name, self.path, self.touched = name, path, now
        self.size = 0
        self.hasher = hashlib.sha256()
        self.lock = threading.Lock()
        self.head = b""                                 # the first bytes, to tell a layer
        self.decoder: Optional[_LayerDecoder] = None
        self.held = 0                                   # spooled bytes counted against the spool budget
        self.dropped = False


def _file_digest(algorithm: str, path: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
    return "%s:%s" % (algorithm, hasher.hexdigest())


class UploadSessions:
    """The upload sessions of a RegistryWriter (writer.py), which holds their table, lock and spool budget."""

    @property
    def uploads_in_progress(self) -> int:
        return len(self._uploads)

    @property
    def spool_held(self) -> int:
        """Bytes the uploads in progress hold in the spool (counted against its budget)."""
        return self._held

    @property
    def _decode_limit(self) -> DecodeLimit:
        return DecodeLimit(self.max_blob)

    def start(self, name: str) -> str:
        self._expire()
        with self._lock:
            if len(self._uploads) >= MAX_UPLOADS:
                raise ApiError(429, "TOOMANYREQUESTS", "%d uploads are in progress: finish or cancel some" % MAX_UPLOADS)
        session = uuid.uuid4().hex
        upload = _Upload(name, os.path.join(self.spool, "upload-" + session), self.clock())
        open(upload.path, "wb").close()
        with self._lock:
            self._uploads[session] = upload
        return session

    def _upload(self, name: str, session: str) -> _Upload:
        self._expire()
        with self._lock:
            upload = self._uploads.get(session)
        if upload is None or upload.name != name:
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", "upload %s is not in progress here (it may have expired)"
                           % session[:64])
        return upload

    @staticmethod
    def _still_going(upload: _Upload, session: str) -> None:
        """Under the upload's lock: it was not dropped (abandoned) while the request waited for the lock."""
        if upload.dropped:
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", "upload %s expired" % session[:64])

    def status(self, name: str, session: str) -> int:
        return self._upload(name, session).size

    def append(self, name: str, session: str, body, length: Optional[int], content_range: Optional[str]) -> int:
        """Append a PATCH body (a chunk at `content_range`, or a stream); returns the upload's size."""
        upload = self._upload(name, session)
        with upload.lock:
            self._still_going(upload, session)
            self._check_order(name, session, upload, content_range)
            self._write(upload, body, length)
            return upload.size

    def _check_order(self, name: str, session: str, upload: _Upload, content_range: Optional[str]) -> None:
        """A chunk must start where the upload ends (416, and the upload goes on, if not)."""
        if content_range:
            start, _sep, _end = content_range.strip().partition("-")
            if not start.isdigit() or int(start) != upload.size:
                raise ApiError(416, "BLOB_UPLOAD_INVALID", "chunk at %r does not follow the %d bytes received"
                               % (content_range[:60], upload.size), self.range_headers(name, session, upload.size))

    def _write(self, upload: _Upload, body, length: Optional[int]) -> None:
        if body is None:
            return
        remaining = length
        try:
            with open(upload.path, "ab") as out:
                while remaining is None or remaining > 0:
                    chunk = body.read(CHUNK if remaining is None else min(CHUNK, remaining))
                    if not chunk:
                        break
                    if upload.size + len(chunk) > self.max_blob:
                        raise ApiError(413, "SIZE_INVALID", "blob larger than this accelerator takes (%d bytes)"
                                       % self.max_blob)
                    self._take_spool(upload, len(chunk))
                    out.write(chunk)
                    upload.hasher.update(chunk)
                    upload.size += len(chunk)
                    upload.touched = self.clock()
                    if remaining is not None:
                        remaining -= len(chunk)
                    if upload.decoder is not None or len(upload.head) < HEAD:
                        out.flush()
                        self._feed_decoder(upload, chunk)
        except OSError as exc:
            self._drop(upload)
            raise ApiError(507, "UNKNOWN", "spooling the upload failed: %s" % (exc.strerror or exc))
        except ApiError:
            self._drop(upload)
            raise
        upload.touched = self.clock()

    def _take_spool(self, upload: _Upload, size: int) -> None:
        """Count `size` more bytes of an upload against the spool budget: 429 while other uploads hold it (after
        abandoned ones gave their room back), 507 when this upload alone would pass it."""
        for attempt in range(2):
            with self._lock:
                if self._held + size <= self.spool_budget:
                    self._held += size
                    upload.held += size
                    return
                never = upload.held + size > self.spool_budget
            if never or attempt:
                break
            self._expire()
        if never:
            raise ApiError(507, "UNKNOWN", "blob larger than this accelerator's spool budget (%d bytes)" % self.spool_budget)
        raise ApiError(429, "TOOMANYREQUESTS", "the uploads in progress fill this accelerator's spool budget (%d bytes): "
                       "retry later" % self.spool_budget, [("Retry-After", "10")])

    def _give_back_spool(self, upload: _Upload) -> None:
        with self._lock:
            self._held -= upload.held
            upload.held = 0

    def finish(self, name: str, session: str, digest: str, body, length: Optional[int],
               content_range: Optional[str] = None) -> str:
        """Complete an upload (PUT ?digest=, optionally with a last chunk): verify, then store it; returns the digest."""
        algorithm, _hex = self.parse_digest(digest)
        upload = self._upload(name, session)
        with upload.lock:
            self._still_going(upload, session)
            self._check_order(name, session, upload, content_range)
            self._write(upload, body, length)
            with self._lock:
                self._uploads.pop(session, None)
            decoded = upload.decoder.end() if upload.decoder is not None else None
            actual = "sha256:" + upload.hasher.hexdigest() if algorithm == "sha256" else _file_digest(algorithm, upload.path)
            try:
                if actual != digest:
                    raise ApiError(400, "DIGEST_INVALID", "the %d bytes uploaded hash to %s, not %s"
                                   % (upload.size, actual, digest[:150]))
                if algorithm == "sha256" and upload.decoder is None and looks_like_layer(upload.head):
                    decoded = self._decode(digest, upload.path)      # the decoders were all busy
                self._store(digest, upload.path, upload.size, decoded if algorithm == "sha256" else None)
            finally:
                unlink_quietly(upload.path)
                self._give_back_spool(upload)
                if decoded is not None:
                    unlink_quietly(decoded.path)
        return digest

    def cancel(self, name: str, session: str) -> None:
        upload = self._upload(name, session)
        self._drop(upload)

    def _feed_decoder(self, upload: _Upload, chunk: bytes) -> None:
        """Start decoding once the first bytes show a layer; tell a running decoder the spool grew."""
        if upload.decoder is None:
            upload.head += chunk[:HEAD - len(upload.head)]
            if len(upload.head) < HEAD or not looks_like_layer(upload.head) or not self._decoders.acquire(False):
                return      # not yet, not a layer, or decoders all busy: _store decodes it after the last byte
            try:
                upload.decoder = _LayerDecoder(upload.path, "pushed blob", self.compression, self.spool, self._decoders,
                                               self._decode_limit)
            except Exception:
                self._decoders.release()
                raise
        upload.decoder.grew(upload.size)

    def _drop(self, upload: _Upload) -> None:
        upload.dropped = True
        with self._lock:
            for session, found in list(self._uploads.items()):
                if found is upload:
                    del self._uploads[session]
        if upload.decoder is not None:
            upload.decoder.discard()
        unlink_quietly(upload.path)
        self._give_back_spool(upload)

    def _expire(self) -> None:
        """Drop uploads abandoned by their clients, and the leases of blobs no manifest claimed. Cheap: it runs
        at every upload request, so an abandoned upload's spool file goes as soon as anything happens."""
        now = self.clock()
        with self._lock:
            idle = [u for u in self._uploads.values() if now - u.touched > UPLOAD_IDLE_TTL]
            unclaimed = [d for d, (_lease, when) in self._leases.items() if now - when > CLAIM_TTL]
            leases = [self._leases.pop(d)[0] for d in unclaimed]
        for upload in idle:
            if upload.lock.acquire(False):      # held: a request is writing to it, so it is not abandoned
                try:
                    self._drop(upload)
                finally:
                    upload.lock.release()
        for lease in leases:
            drop_lease(self.repo, lease)

    @staticmethod
    def range_headers(name: str, session: str, size: int):
        return [("Location", "/v2/%s/blobs/uploads/%s" % (name, session)), ("Docker-Upload-UUID", session),
                ("Range", "0-%d" % max(size - 1, 0))]

    @staticmethod
    def parse_digest(digest: Optional[str]) -> Tuple[str, str]:
        """A digest from a request -> (algorithm, hex), or 400 DIGEST_INVALID."""
        if not digest:
            raise ApiError(400, "DIGEST_INVALID", "the digest query parameter is missing")
        algorithm = digest.partition(":")[0]
        if algorithm not in DIGEST_ALGORITHMS:
            raise ApiError(400, "DIGEST_INVALID", "unsupported digest %r: this registry takes %s"
                           % (digest[:80], " and ".join(DIGEST_ALGORITHMS)))
        try:
            return split_digest(digest)
        except FormatError:
            raise ApiError(400, "DIGEST_INVALID", "invalid digest %r" % digest[:150])
