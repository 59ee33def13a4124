# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The write side of the registry API: blob uploads and manifests, stored in the remote's format.

What a client pushes is kept as pushed (format version 2): every blob under its digest, every
manifest, index or artifact byte for byte, so digests, signatures and referrers stay valid and
`docker pull` of a pushed digest gets what was pushed. A blob that is a layer (gzip, zstd or tar)
is also decoded, while it arrives, and stored by diff_id as lz4 (spool_layer, as for `docker save`)
and recorded in pushed/sha256/<digest>; an image manifest whose layers all decoded to its config's
diff_ids then also gets a dogestry manifest, so dogestry_pull loads it the thin way and later
dogestry pushes reuse its layers. Manifest, referrer record, then tag are written last.

No HTTP here: RegistryApi routes requests to this class; ApiError carries the spec's error codes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ._docker_archive import SpooledLayer, looks_like_layer, spool_layer
from ._errors import DogestryError, FormatError
from ._format import (
    DIGEST_ALGORITHMS, ENCODINGS, PUSHED_PREFIX, Descriptor, ImageRef, LayerEntry, Manifest, OciManifest, blob_key,
    canonical_json, diff_ids_of_config, digest_of, load_json, object_key, oci_manifest_key, parse_digest, pushed_key,
    referrer_key, split_digest,
)
from ._prune import drop_lease, write_lease
from ._remote import unlink_quietly
from ._repository import Repository

CHUNK = 1 << 20
HEAD = 512                      # bytes that tell a layer (gzip, zstd or tar magic) from other blobs
MAX_MANIFEST = 4 << 20          # the spec's suggested limit for a manifest body
SESSION_TTL = 3600.0            # an upload untouched this long, or a blob no manifest claimed, is dropped
MAX_UPLOADS = 1000              # uploads in progress at once (each holds a spool file)
MAX_DECODERS = 16               # layers decoded while they arrive; more wait for their last byte


class ApiError(Exception):
    """An error the registry API answers with (status, one of the spec's codes, a one-line message)."""

    def __init__(self, status: int, code: str, message: str, headers=()):
        Exception.__init__(self, message)
        self.status, self.code, self.message, self.headers = status, code, message, list(headers)


@dataclass(frozen=True)
class PushedLayer:
    """What a pushed (compressed) layer blob became in the remote."""
    blob_size: int          # bytes of the blob as pushed
    layer: LayerEntry       # the stored layer: diff_id, uncompressed size, encoding, stored size

    def record(self) -> bytes:
        return canonical_json({"diff_id": "sha256:" + self.layer.oid, "size": self.layer.size,
                               "encoding": self.layer.encoding, "stored_size": self.layer.stored_size,
                               "blob_size": self.blob_size})

    @classmethod
    def from_record(cls, data: bytes, where: str) -> "PushedLayer":
        try:
            doc = load_json(data)
            sizes = [doc[key] for key in ("size", "stored_size", "blob_size")]
            if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
                raise ValueError("bad sizes %r" % (sizes,))
            if doc["encoding"] not in ENCODINGS:
                raise ValueError("unknown encoding %r" % (doc["encoding"],))
            return cls(doc["blob_size"], LayerEntry(parse_digest(doc["diff_id"]), doc["size"], doc["encoding"],
                                                    doc["stored_size"]))
        except (ValueError, TypeError, KeyError, FormatError) as exc:
            raise FormatError("push record %s is malformed (%s)" % (where, exc))


class _LayerDecoder:
    """Decodes a layer from an upload's spool file while the client is still sending it, so that the
    upload's last byte is followed by a store, not by a decode. The spool file holds what arrived:
    the decoder follows it and never holds the writer back."""

    def __init__(self, path: str, what: str, encoding: str, spool_dir: str, slots: threading.Semaphore):
        self._file = open(path, "rb")
        self._written = 0
        self._ended = False
        self._grown = threading.Condition()
        self._slots = slots
        self.result: Optional[SpooledLayer] = None      # set when the whole blob decoded
        self._thread = threading.Thread(target=self._run, args=(what, encoding, spool_dir), daemon=True,
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

    def _run(self, what: str, encoding: str, spool_dir: str) -> None:
        try:
            self.result = spool_layer(self, what, encoding, spool_dir)
        except Exception:  # noqa: BLE001  not a layer after all (or no room): stored as pushed only
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


class RegistryWriter:
    """Uploads in progress, blobs waiting for their manifest, and what pushed layers became."""

    def __init__(self, repo: Repository, spool_dir: Optional[str] = None, max_blob: int = 64 << 30,
                 compression: str = "lz4", clock=time.monotonic):
        self.repo = repo
        self.max_blob = max_blob
        self.compression = compression
        self.clock = clock
        # Finished blobs go into a directory remote by link(), which works within one filesystem and
        # mount only: spool in its staging directory unless told otherwise (None: S3, the temp dir).
        self.spool = tempfile.mkdtemp(prefix="dogestry-uploads-", dir=spool_dir or repo.remote.staging_dir())
        self._uploads: Dict[str, _Upload] = {}
        self._pushed: Dict[str, PushedLayer] = {}        # hex of a pushed blob -> what it became
        self._leases: Dict[str, Tuple[str, float]] = {}  # hex of a pushed blob -> (lease key, when) until a manifest
        self._decoders = threading.Semaphore(MAX_DECODERS)
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)

    # -- uploads ------------------------------------------------------------------------------

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
        with self._lock:
            upload = self._uploads.get(session)
        if upload is None or upload.name != name:
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", "upload %s is not in progress here (it may have expired)"
                           % session[:64])
        return upload

    def status(self, name: str, session: str) -> int:
        return self._upload(name, session).size

    def append(self, name: str, session: str, body, length: Optional[int], content_range: Optional[str]) -> int:
        """Append a PATCH body (a chunk at `content_range`, or a stream); returns the upload's size."""
        upload = self._upload(name, session)
        with upload.lock:
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
                    out.write(chunk)
                    upload.hasher.update(chunk)
                    upload.size += len(chunk)
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

    def finish(self, name: str, session: str, digest: str, body, length: Optional[int],
               content_range: Optional[str] = None) -> str:
        """Complete an upload (PUT ?digest=, optionally with a last chunk): verify, then store it; returns the digest."""
        algorithm, _hex = self.parse_digest(digest)
        upload = self._upload(name, session)
        with upload.lock:
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
                upload.decoder = _LayerDecoder(upload.path, "pushed blob", self.compression, self.spool, self._decoders)
            except Exception:
                self._decoders.release()
                raise
        upload.decoder.grew(upload.size)

    def _drop(self, upload: _Upload) -> None:
        with self._lock:
            for session, found in list(self._uploads.items()):
                if found is upload:
                    del self._uploads[session]
        if upload.decoder is not None:
            upload.decoder.discard()
        unlink_quietly(upload.path)

    def _expire(self) -> None:
        now = self.clock()
        with self._lock:
            stale = [u for u in self._uploads.values() if now - u.touched > SESSION_TTL]
            unclaimed = [h for h, (_lease, when) in self._leases.items() if now - when > SESSION_TTL]
            leases = [self._leases.pop(h)[0] for h in unclaimed]
        for upload in stale:
            self._drop(upload)
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

    # -- finished blobs -------------------------------------------------------------------------

    def _decode(self, digest: str, path: str) -> Optional[SpooledLayer]:
        """A complete blob that looks like a layer, decoded into the spool (None if it is not one after all)."""
        try:
            with open(path, "rb") as f:
                return spool_layer(f, "pushed blob " + digest, self.compression, self.spool)
        except OSError as exc:
            raise ApiError(507, "UNKNOWN", "spooling %s failed: %s" % (digest, exc.strerror or exc))
        except Exception:  # noqa: BLE001  zlib, zstd or tar errors: not a layer after all, kept as pushed only
            return None

    def _store(self, digest: str, path: str, size: int, spooled: Optional[SpooledLayer]) -> None:
        """Store a verified blob as pushed, under a lease until a manifest names it; a layer (`spooled`,
        its decoded copy) is also stored by its diff_id. The caller removes both spool files."""
        _algorithm, hexdigest = split_digest(digest)
        self.repo.check(create=True)
        lease = write_lease(self.repo, [hexdigest] + ([spooled.oid] if spooled else []))
        with self._lock:
            old = self._leases.pop(hexdigest, None)
            self._leases[hexdigest] = (lease, self.clock())
        if old:
            drop_lease(self.repo, old[0])
        if spooled is not None and spooled.oid != hexdigest:    # a raw tar is its own decoded copy
            self.repo.remote.put_file(blob_key(spooled.oid, spooled.encoding), spooled.path)
        self.repo.remote.put_file(object_key(digest), path)
        if spooled is not None:
            layer = (LayerEntry(hexdigest, size, "none", size) if spooled.oid == hexdigest
                     else LayerEntry(spooled.oid, spooled.size, spooled.encoding, spooled.stored_size))
            pushed = PushedLayer(size, layer)
            self.repo.remote.put(pushed_key(hexdigest), pushed.record(), overwrite=True)
            with self._lock:
                self._pushed[hexdigest] = pushed

    def pushed_layer(self, hexdigest: str) -> Optional[PushedLayer]:
        """What a pushed blob became, if the remote still holds it whole (records are hints)."""
        with self._lock:
            pushed = self._pushed.get(hexdigest)
        if pushed is None:
            try:
                data = self.repo.remote.get(pushed_key(hexdigest))
            except DogestryError:
                return None
            try:
                pushed = PushedLayer.from_record(data, "%s%s on %s" % (PUSHED_PREFIX, hexdigest, self.repo.url))
            except FormatError:
                return None
        found = self.repo.remote.stat([pushed.layer.key]).get(pushed.layer.key)
        if found is None or found.size != pushed.layer.stored_size:
            return None
        with self._lock:
            self._pushed[hexdigest] = pushed
        return pushed

    # -- manifests ------------------------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, content_type: Optional[str], body,
                     manifest_exists=lambda digest: False) -> Tuple[str, OciManifest]:
        """Store a manifest, index or artifact pushed under name:reference (a tag, or its digest) as pushed,
        once everything it names is stored; returns (its digest, the parsed manifest).

        `manifest_exists(digest)`: whether the registry serves a manifest an index names that is not
        stored verbatim (an image dogestry_push stored, shown as Manifest.oci_bytes())."""
        data = body.read(MAX_MANIFEST + 1) if body is not None else b""
        if len(data) > MAX_MANIFEST:
            raise ApiError(413, "SIZE_INVALID", "manifest larger than %d bytes" % MAX_MANIFEST)
        algorithm = self.parse_digest(reference)[0] if ":" in reference else "sha256"
        digest = digest_of(algorithm, data)
        if ":" in reference and digest != reference:
            raise ApiError(400, "DIGEST_INVALID", "the manifest's bytes hash to %s, not %s" % (digest, reference[:150]))
        try:
            manifest = OciManifest.parse(data, content_type, "the manifest")
        except FormatError as exc:
            raise ApiError(400, "MANIFEST_INVALID", str(exc))
        missing = self._missing_blobs(manifest)
        if missing:
            raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "%s was not pushed before the manifest naming it" % missing)
        for child in manifest.manifests:
            if not self._manifest_stored(child.digest) and not manifest_exists(child.digest):
                raise ApiError(400, "MANIFEST_UNKNOWN", "manifest %s, which the index names, was not pushed first"
                               % child.digest)
        self.repo.hold_oci_content()
        self.repo.remote.put(oci_manifest_key(digest), data)
        if manifest.subject is not None:
            self.repo.remote.put(referrer_key(manifest.subject.digest, digest), manifest.referrer(digest).to_bytes())
        decoded = self._decoded_twin(manifest)
        if ":" not in reference:
            self.repo.write_oci_tag(ImageRef(name, reference), Descriptor(manifest.media_type, digest, len(data)))
        self._release([d.digest for d in manifest.required()] + (decoded or []))
        return digest, manifest

    def _missing_blobs(self, manifest: OciManifest) -> Optional[str]:
        """The first blob a manifest names that is not stored (verbatim, or a layer stored decoded)."""
        wanted = manifest.required()
        keys = [object_key(d.digest) for d in wanted]
        keys += [blob_key(parse_digest(d.digest), "lz4") for d in wanted if d.digest.startswith("sha256:")]
        found = self.repo.remote.stat(keys) if keys else {}
        for descriptor in wanted:
            alternatives = [object_key(descriptor.digest)]
            if descriptor.digest.startswith("sha256:"):
                alternatives.append(blob_key(parse_digest(descriptor.digest), "lz4"))
            if not any(key in found and (found[key].size == descriptor.size or key != alternatives[0])
                       for key in alternatives):
                return descriptor.digest
        return None

    def _manifest_stored(self, digest: str) -> bool:
        key = oci_manifest_key(digest)
        return key in self.repo.remote.stat([key])

    def _decoded_twin(self, manifest: OciManifest) -> Optional[list]:
        """For an image whose layers were all decoded to its config's diff_ids: store its dogestry manifest
        (the thin path dogestry_pull and dogestry_push share) and return the diff_ids; else None."""
        if not manifest.is_image or not manifest.config.digest.startswith("sha256:"):
            return None
        config_hex = parse_digest(manifest.config.digest)
        try:
            config = self.repo.remote.get(blob_key(config_hex))
            if digest_of("sha256", config) != manifest.config.digest:
                return None
            diff_ids = diff_ids_of_config(config, manifest.config.digest)
        except (DogestryError, FormatError):
            return None
        if len(diff_ids) != len(manifest.layers):
            return None
        layers = []
        for descriptor, diff_id in zip(manifest.layers, diff_ids):
            layer = self._decoded_layer(descriptor, diff_id)
            if layer is None:
                return None
            layers.append(layer)
        self.repo.write_manifest(Manifest(config_hex, len(config), tuple(layers)))
        return ["sha256:" + oid for oid in diff_ids]

    def _decoded_layer(self, descriptor: Descriptor, diff_id: str) -> Optional[LayerEntry]:
        if not descriptor.digest.startswith("sha256:"):
            return None
        hexdigest = parse_digest(descriptor.digest)
        pushed = self.pushed_layer(hexdigest)
        if pushed is not None:
            return pushed.layer if pushed.layer.oid == diff_id else None
        if hexdigest == diff_id:        # an uncompressed layer the remote already has (pulled from here)
            found = self.repo.remote.stat([blob_key(diff_id, encoding) for encoding in ENCODINGS])
            for encoding in ("lz4", "none"):
                if blob_key(diff_id, encoding) in found:
                    return LayerEntry(diff_id, descriptor.size, encoding, found[blob_key(diff_id, encoding)].size)
        return None

    def _release(self, digests) -> None:
        """A manifest now references these: drop the leases that kept them until it did."""
        with self._lock:
            leases = [self._leases.pop(d.partition(":")[2])[0] for d in digests if d.partition(":")[2] in self._leases]
        for lease in leases:
            drop_lease(self.repo, lease)


def _file_digest(algorithm: str, path: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
    return "%s:%s" % (algorithm, hasher.hexdigest())
