# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The write side of the registry API: blob uploads and image manifests, stored in the remote's format.

Docker pushes layers compressed (gzip, or zstd from the containerd store) under the digest of the
compressed bytes; the remote keys layers by their uncompressed digest (diff_id) and stores them
lz4. So a finished upload that is a layer is decoded, hashed and re-encoded at once (spool_layer,
as for a push from `docker save`), stored create-only, and a record pushed/sha256/<digest> names
its diff_id, so that the next push's existence checks are answered from any host and after a
restart without the compressed bytes. Blobs that are not layers (the image config) wait in the
spool until a manifest names them. A manifest is checked against its config's diff_ids, then
config, manifest and tag are written, in that order, as dogestry_push writes them.

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

from ._docker_archive import looks_like_layer, spool_layer
from ._errors import DogestryError, FormatError
from ._format import (
    ENCODINGS, PUSHED_PREFIX, ImageRef, LayerEntry, Manifest, blob_key, canonical_json, diff_ids_of_config, load_json,
    parse_digest, pushed_key, sha256_hex,
)
from ._prune import drop_lease, write_lease
from ._remote import unlink_quietly
from ._repository import Repository

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20          # the spec's suggested limit for a manifest body
SESSION_TTL = 3600.0            # an upload untouched this long, or a blob no manifest claimed, is dropped
MAX_UPLOADS = 1000              # uploads in progress at once (each holds a spool file)
# Manifests this version takes: single-platform images (indexes and artifacts are refused).
IMAGE_MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json")
_LAYER_SUFFIXES = ("tar", "tar.gzip", "tar+gzip", "tar+zstd", "diff.tar.gzip")


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


class _Upload:
    def __init__(self, name: str, path: str, now: float):
        self.name, self.path, self.touched = name, path, now
        self.size = 0
        self.hasher = hashlib.sha256()
        self.lock = threading.Lock()


class RegistryWriter:
    """Uploads in progress, blobs waiting for their manifest, and what pushed layers became."""

    def __init__(self, repo: Repository, spool_dir: Optional[str] = None, max_blob: int = 64 << 30,
                 compression: str = "lz4", clock=time.monotonic):
        self.repo = repo
        self.max_blob = max_blob
        self.compression = compression
        self.clock = clock
        self.spool = tempfile.mkdtemp(prefix="dogestry-uploads-", dir=spool_dir)
        self._uploads: Dict[str, _Upload] = {}
        self._staged: Dict[str, Tuple[str, float]] = {}  # hex -> (path, when) of a finished blob that is not a layer
        self._pushed: Dict[str, PushedLayer] = {}        # hex of a pushed blob -> what it became
        self._leases: Dict[str, str] = {}                # diff_id -> lease key protecting it until its manifest
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
            if content_range:
                start, _sep, _end = content_range.strip().partition("-")
                if not start.isdigit() or int(start) != upload.size:
                    raise ApiError(416, "BLOB_UPLOAD_INVALID", "chunk at %r does not follow the %d bytes received"
                                   % (content_range[:60], upload.size), self.range_headers(name, session, upload.size))
            self._write(upload, body, length)
            return upload.size

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
        except OSError as exc:
            self._drop(upload)
            raise ApiError(507, "UNKNOWN", "spooling the upload failed: %s" % (exc.strerror or exc))
        except ApiError:
            self._drop(upload)
            raise
        upload.touched = self.clock()

    def finish(self, name: str, session: str, digest: str, body, length: Optional[int]) -> str:
        """Complete an upload (PUT ?digest=): verify, then store it; returns the digest's hex."""
        hexdigest = self.digest_hex(digest)
        upload = self._upload(name, session)
        with upload.lock:
            self._write(upload, body, length)
            with self._lock:
                self._uploads.pop(session, None)
            if upload.hasher.hexdigest() != hexdigest:
                os.unlink(upload.path)
                raise ApiError(400, "DIGEST_INVALID", "the %d bytes uploaded hash to sha256:%s, not %s"
                               % (upload.size, upload.hasher.hexdigest(), digest))
            self._store(hexdigest, upload.path, upload.size)
        return hexdigest

    def cancel(self, name: str, session: str) -> None:
        upload = self._upload(name, session)
        self._drop(upload)

    def _drop(self, upload: _Upload) -> None:
        with self._lock:
            for session, found in list(self._uploads.items()):
                if found is upload:
                    del self._uploads[session]
        unlink_quietly(upload.path)

    def _expire(self) -> None:
        now = self.clock()
        with self._lock:
            stale = [u for u in self._uploads.values() if now - u.touched > SESSION_TTL]
            unclaimed = [h for h, (_path, when) in self._staged.items() if now - when > SESSION_TTL]
            paths = [self._staged.pop(h)[0] for h in unclaimed]
        for upload in stale:
            self._drop(upload)
        for path in paths:
            unlink_quietly(path)

    @staticmethod
    def range_headers(name: str, session: str, size: int):
        return [("Location", "/v2/%s/blobs/uploads/%s" % (name, session)), ("Docker-Upload-UUID", session),
                ("Range", "0-%d" % max(size - 1, 0))]

    @staticmethod
    def digest_hex(digest: Optional[str]) -> str:
        if not digest:
            raise ApiError(400, "DIGEST_INVALID", "the digest query parameter is missing")
        algorithm, _sep, value = digest.partition(":")
        if algorithm != "sha256":
            raise ApiError(400, "DIGEST_INVALID", "unsupported digest %r: this registry takes sha256" % digest[:80])
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ApiError(400, "DIGEST_INVALID", "invalid digest %r" % digest[:80])
        return value

    # -- finished blobs -------------------------------------------------------------------------

    def _store(self, hexdigest: str, path: str, size: int) -> None:
        with open(path, "rb") as f:
            head = f.read(512)
        if not looks_like_layer(head):
            target = os.path.join(self.spool, "blob-" + hexdigest)
            os.replace(path, target)
            with self._lock:
                self._staged[hexdigest] = (target, self.clock())
            return
        try:
            self._store_layer(hexdigest, path, size)
        finally:
            os.unlink(path)

    def _store_layer(self, hexdigest: str, path: str, size: int) -> None:
        """Decode, hash and re-encode a pushed layer, store it by diff_id, and record what it became."""
        what = "pushed blob sha256:%s" % hexdigest
        try:
            with open(path, "rb") as f:
                spooled = spool_layer(f, what, self.compression, self.spool)
        except OSError as exc:
            raise ApiError(507, "UNKNOWN", "spooling %s failed: %s" % (what, exc.strerror or exc))
        except Exception as exc:  # noqa: BLE001  zlib.error, zstd errors: a blob that is not what it claims
            raise ApiError(400, "BLOB_UPLOAD_INVALID", "%s cannot be decoded as a layer: %s" % (what, exc))
        try:
            self.repo.check(create=True)
            lease = write_lease(self.repo, [spooled.oid])
            self.repo.remote.put_file(blob_key(spooled.oid, spooled.encoding), spooled.path)
        finally:
            unlink_quietly(spooled.path)      # what put_file left of the spool file, stored or not
        pushed = PushedLayer(size, LayerEntry(spooled.oid, spooled.size, spooled.encoding, spooled.stored_size))
        self.repo.remote.put(pushed_key(hexdigest), pushed.record(), overwrite=True)
        with self._lock:
            self._pushed[hexdigest] = pushed
            old = self._leases.pop(spooled.oid, None)
            self._leases[spooled.oid] = lease
        if old:
            drop_lease(self.repo, old)

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

    def staged(self, hexdigest: str) -> Optional[str]:
        with self._lock:
            found = self._staged.get(hexdigest)
        return found[0] if found else None

    # -- manifests ------------------------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, content_type: Optional[str], body) -> Tuple[str, str]:
        """Store an image manifest pushed under name:reference (a tag or the body's digest).

        Returns (the stored manifest's oid, the sha256 of the bytes pushed): clients check that the
        registry answers with the digest of what they sent, though the image is then served under
        the digest of its canonical rendering (Manifest.oci_bytes), the same for every push of it."""
        data = body.read(MAX_MANIFEST + 1) if body is not None else b""
        if len(data) > MAX_MANIFEST:
            raise ApiError(413, "SIZE_INVALID", "manifest larger than %d bytes" % MAX_MANIFEST)
        if ":" in reference and self.digest_hex(reference) != sha256_hex(data):
            raise ApiError(400, "DIGEST_INVALID", "the manifest's bytes hash to sha256:%s, not %s"
                           % (sha256_hex(data), reference[:80]))
        try:
            doc = load_json(data)
            media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
            if doc.get("schemaVersion") != 2 or media_type not in IMAGE_MANIFEST_TYPES:
                raise ApiError(415, "MANIFEST_INVALID",
                               "only single-platform image manifests (%s) can be pushed here, not %r"
                               % (", ".join(IMAGE_MANIFEST_TYPES), media_type[:100]))
            config_hex = parse_digest(doc["config"]["digest"])
            descriptors = [(parse_digest(layer["digest"]), layer.get("mediaType", ""), layer["size"])
                           for layer in doc["layers"]]
        except (ValueError, TypeError, KeyError, AttributeError, FormatError) as exc:
            raise ApiError(400, "MANIFEST_INVALID", "malformed manifest: %s" % exc)
        config = self._config(config_hex)
        try:
            diff_ids = diff_ids_of_config(config, "sha256:" + config_hex)
        except FormatError as exc:
            raise ApiError(400, "MANIFEST_INVALID", str(exc))
        if len(diff_ids) != len(descriptors):
            raise ApiError(400, "MANIFEST_INVALID", "the manifest lists %d layers, its config %d"
                           % (len(descriptors), len(diff_ids)))
        layers = tuple(self._layer(i, descriptor, diff_id)
                       for i, (descriptor, diff_id) in enumerate(zip(descriptors, diff_ids)))
        self.repo.check(create=True)
        self.repo.remote.put(blob_key(config_hex), config)
        manifest_oid = self.repo.write_manifest(Manifest(config_hex, len(config), layers))
        if ":" not in reference:
            self.repo.write_tag(ImageRef(name, reference), manifest_oid)
        self._release(config_hex, [layer.oid for layer in layers])
        return manifest_oid, sha256_hex(data)

    def _config(self, hexdigest: str) -> bytes:
        path = self.staged(hexdigest)
        if path is not None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            try:
                data = self.repo.remote.get(blob_key(hexdigest))
            except DogestryError:
                raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "config sha256:%s was not uploaded" % hexdigest)
        if sha256_hex(data) != hexdigest:
            raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "config sha256:%s does not match its digest" % hexdigest)
        return data

    def _layer(self, index: int, descriptor, diff_id: str) -> LayerEntry:
        hexdigest, media_type, size = descriptor
        if media_type and not media_type.endswith(_LAYER_SUFFIXES):
            raise ApiError(400, "MANIFEST_INVALID", "layer %d has media type %r, which is not an image layer"
                           % (index, media_type[:100]))
        pushed = self.pushed_layer(hexdigest)
        if pushed is not None:
            if pushed.layer.oid != diff_id:
                raise ApiError(400, "MANIFEST_INVALID", "layer %d (sha256:%s) unpacks to sha256:%s, its config says "
                               "sha256:%s" % (index, hexdigest, pushed.layer.oid, diff_id))
            return pushed.layer
        if hexdigest == diff_id:        # an uncompressed layer the remote already has (pulled from here)
            found = self.repo.remote.stat([blob_key(diff_id, encoding) for encoding in ENCODINGS])
            for encoding in ENCODINGS:
                if blob_key(diff_id, encoding) in found:
                    return LayerEntry(diff_id, size, encoding, found[blob_key(diff_id, encoding)].size)
        raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "layer %d (sha256:%s) was not uploaded" % (index, hexdigest))

    def _release(self, config_hex: str, diff_ids) -> None:
        """The manifest now references these: drop their leases and the staged config."""
        with self._lock:
            staged = self._staged.pop(config_hex, None)
            leases = [self._leases.pop(oid) for oid in diff_ids if oid in self._leases]
        if staged:
            unlink_quietly(staged[0])
        for lease in leases:
            drop_lease(self.repo, lease)
