# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The loopback endpoint's write side: Docker's push of an image to the engine, each blob verified
and stored as the engine's own push stores it.

May import _format, _codecs, _storage, _docker and _ops.loopback.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

from .._codecs import _Prefixed, looks_like_layer, spool_layer
from .._errors import DogestryError, FormatError, RemoteNotFoundError
from .._format.keys import blob_key, parse_digest, pushed_key, sha256_hex, split_digest
from .._format.manifest import LayerEntry, PushRecord, diff_ids_of_config
from .._format.oci import IMAGE_MANIFEST_MEDIA_TYPES, OciManifest
from .._storage.base import read_bounded, unlink_quietly
from .._storage.repository import Repository
from .loopback import HEAD, MAX_MANIFEST, MAX_SMALL_BLOB, _ApiError, _HashingReader, _ROUTE, _respond


class PushReceiver:
    """The write side of the engine's endpoint for one `docker push` (a WSGI app).

    `present`: layers (by diff_id) the remote already stores, as the push plan found them. What a blob
    Docker sends becomes is kept in `received` (digest -> (blob size, layer entry or None)); configs in
    `configs`; the manifest Docker puts last in `manifest`; why a write was refused in `failures`.
    `stored` maps each layer oid this receiver wrote to the remote to its stored size; `on_stored(oid,
    stored size)` is called as each is written.
    """

    def __init__(self, repo: Repository, present: Dict[str, LayerEntry], encoding: str, spool_dir: str, tag: str,
                 max_blob: int = 64 << 30, on_stored: Callable[[str, int], None] = lambda oid, size: None):
        self.repo, self.present, self.encoding, self.spool_dir = repo, dict(present), encoding, spool_dir
        self.tag, self.max_blob, self.on_stored = tag, max_blob, on_stored
        self.received: Dict[str, Tuple[int, Optional[LayerEntry]]] = {}
        self.configs: Dict[str, bytes] = {}
        self.stored: Dict[str, int] = {}
        self.manifest: Optional[bytes] = None
        self.failures: List[DogestryError] = []     # why a write was refused: Docker's own error says less
        self._uploads: Dict[str, str] = {}      # session -> spool file of PATCHed chunks (Docker's containerd
        self._lock = threading.Lock()           # store sends each blob in one PUT; other clients may chunk)

    def close(self) -> None:
        for path in self._uploads.values():
            unlink_quietly(path)

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        query = {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            if path in ("/v2", "/v2/"):
                return _respond(start_response, 200, [("Content-Type", "application/json")], b"{}")
            match = _ROUTE.match(path)
            if not match:
                raise _ApiError(404, "NOT_FOUND", "no such endpoint: %s" % path[:200])
            name, kind, ref = match.group("name"), match.group("kind"), match.group("ref")
            body = environ.get("wsgi.input")
            if kind == "blobs" and method in ("HEAD", "GET"):
                size = self.blob_size(ref)
                if size is None:
                    raise _ApiError(404, "BLOB_UNKNOWN", "blob %s is not on the remote" % ref[:80])
                if method == "GET":
                    raise _ApiError(405, "UNSUPPORTED", "this endpoint takes pushes only")
                start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size)),
                                          ("Docker-Content-Digest", ref), ("ETag", '"%s"' % ref),
                                          ("Docker-Distribution-API-Version", "registry/2.0")])
                return [b""]
            if kind == "blobs/uploads":
                # Absolute http:// locations: Docker tries TLS first on a registry it was not told is plain
                # http, and a relative location would send each upload's PUT through that detour again.
                base = "http://%s" % environ.get("HTTP_HOST", "127.0.0.1")
                return self._upload(start_response, method, base, name, ref, query, body)
            if kind == "manifests" and method == "PUT":
                if ref != self.tag:
                    raise _ApiError(404, "NAME_UNKNOWN", "this endpoint takes one manifest, under another tag")
                digest = self._put_manifest(body)
                return _respond(start_response, 201, [("Location", "/v2/%s/manifests/%s" % (name, digest)),
                                                      ("Docker-Content-Digest", digest)])
            if kind == "manifests":
                raise _ApiError(404, "MANIFEST_UNKNOWN", "manifests are written by the engine, not served here")
            raise _ApiError(405, "UNSUPPORTED", "%s %s is not supported here" % (method, path[:200]))
        except _ApiError as exc:
            if method not in ("HEAD", "GET"):
                self.failures.append(DogestryError(exc.message))
            error = json.dumps({"errors": [{"code": exc.code, "message": exc.message, "detail": None}]}).encode()
            return _respond(start_response, exc.status, [("Content-Type", "application/json")],
                            b"" if method == "HEAD" else error)
        except DogestryError as exc:    # the remote failed: Docker's push fails, the engine reports it
            self.failures.append(exc)
            error = json.dumps({"errors": [{"code": "UNKNOWN", "message": str(exc), "detail": None}]}).encode()
            return _respond(start_response, 500, [("Content-Type", "application/json")], error)

    def _upload(self, start_response, method, base, name, session, query, body):
        location = "%s/v2/%s/blobs/uploads/%s" % (base, name, session)
        if method == "POST" and not session:
            mount = query.get("mount")
            if mount and self.blob_size(mount) is not None:
                return _respond(start_response, 201, [("Location", "/v2/%s/blobs/%s" % (name, mount)),
                                                      ("Docker-Content-Digest", mount)])
            if query.get("digest"):
                digest = self._receive(body, query["digest"])
                return _respond(start_response, 201, [("Location", "/v2/%s/blobs/%s" % (name, digest)),
                                                      ("Docker-Content-Digest", digest)])
            session = uuid.uuid4().hex
            return _respond(start_response, 202, [("Location", "%s/v2/%s/blobs/uploads/%s" % (base, name, session)),
                                                  ("Docker-Upload-UUID", session), ("Range", "0-0")])
        if method == "PATCH" and session:
            size = self._append(session, body)
            return _respond(start_response, 202, [("Location", location), ("Docker-Upload-UUID", session),
                                                  ("Range", "0-%d" % max(size - 1, 0))])
        if method == "PUT" and session:
            with self._lock:
                chunks = self._uploads.pop(session, None)
            try:
                if chunks is None:
                    digest = self._receive(body, query.get("digest"))
                else:
                    self._append_to(chunks, body)
                    with open(chunks, "rb") as spooled:
                        digest = self._receive(spooled, query.get("digest"))
            finally:
                if chunks is not None:
                    unlink_quietly(chunks)
            return _respond(start_response, 201, [("Location", "/v2/%s/blobs/%s" % (name, digest)),
                                                  ("Docker-Content-Digest", digest)])
        if method == "DELETE" and session:
            with self._lock:
                chunks = self._uploads.pop(session, None)
            if chunks:
                unlink_quietly(chunks)
            return _respond(start_response, 204)
        raise _ApiError(405, "UNSUPPORTED", "%s of an upload is not supported here" % method)

    def _append(self, session: str, body) -> int:
        with self._lock:
            path = self._uploads.get(session)
            if path is None:
                path = self._uploads[session] = "%s/upload-%s" % (self.spool_dir, session)
        return self._append_to(path, body)

    def _append_to(self, path: str, body) -> int:
        with open(path, "ab") as out:
            for chunk in iter(lambda: body.read(1 << 20) if body else b"", b""):
                out.write(chunk)
            if out.tell() > self.max_blob:
                raise _ApiError(413, "SIZE_INVALID", "blob larger than %d bytes" % self.max_blob)
            return out.tell()

    # -- blobs ---------------------------------------------------------------------------------

    def blob_size(self, digest: str) -> Optional[int]:
        """The size of a blob the remote has in a form this push can use (so Docker need not send it):
        one received here, a layer whose pushed record names a stored copy, a layer stored uncompressed
        under its own digest, or a stored config. None: Docker must send it."""
        try:
            algorithm, hexdigest = split_digest(digest)
        except FormatError:
            raise _ApiError(400, "DIGEST_INVALID", "invalid digest %r" % digest[:80])
        if algorithm != "sha256":
            return None
        with self._lock:
            if digest in self.received:
                return self.received[digest][0]
        pushed = self._pushed_layer(hexdigest)
        if pushed is not None:
            self._take(digest, pushed.blob_size, pushed.layer)
            return pushed.blob_size
        present = self.present.get(hexdigest)
        if present is not None and present.encoding == "none":      # an uncompressed layer, stored as such
            self._take(digest, present.stored_size, LayerEntry(hexdigest, present.stored_size, "none", present.stored_size))
            return present.stored_size
        key = blob_key(hexdigest)
        found = self.repo.remote.stat([key]).get(key)
        return found.size if found is not None else None     # a config (or a raw layer the plan did not name)

    def _pushed_layer(self, hexdigest: str) -> Optional[PushRecord]:
        """What an earlier push (this endpoint's or the registry API's) recorded for a pushed blob, if it was a
        layer and the layer it names is still stored whole (records are hints: the stored copy's size decides)."""
        key = pushed_key("sha256:" + hexdigest)
        try:
            pushed = PushRecord.from_bytes(self.repo.remote.get(key), "%s on %s" % (key, self.repo.url))
        except (RemoteNotFoundError, FormatError):
            return None
        if pushed.layer is None:        # stored as pushed, not decoded: not a layer this push can name
            return None
        found = self.repo.remote.stat([pushed.layer.key]).get(pushed.layer.key)
        return pushed if found is not None and found.size == pushed.layer.stored_size else None

    def _take(self, digest: str, blob_size: int, layer: Optional[LayerEntry]) -> None:
        with self._lock:
            self.received[digest] = (blob_size, layer)

    def _receive(self, body, digest: Optional[str]) -> str:
        """Take one blob: a layer is decoded while it arrives and stored by diff_id, a config kept."""
        if not digest:
            raise _ApiError(400, "DIGEST_INVALID", "the digest query parameter is missing")
        try:
            algorithm, hexdigest = split_digest(digest)
        except FormatError:
            raise _ApiError(400, "DIGEST_INVALID", "invalid digest %r" % digest[:80])
        if algorithm != "sha256":
            raise _ApiError(400, "DIGEST_INVALID", "this endpoint takes sha256 digests")
        reader = _HashingReader(body, self.max_blob)
        head = reader.read(HEAD)
        spooled = None
        try:
            if looks_like_layer(head):
                try:
                    spooled = spool_layer(_Prefixed(head, reader), "layer %s pushed by Docker" % digest,
                                          self.encoding, self.spool_dir)
                except _ApiError:
                    raise
                except (FormatError, OSError, EOFError) as exc:
                    raise _ApiError(400, "BLOB_UPLOAD_INVALID", "layer %s cannot be decoded: %s" % (digest, exc))
                except Exception as exc:  # noqa: BLE001  zlib and zstd errors: not a layer after all
                    raise _ApiError(400, "BLOB_UPLOAD_INVALID", "layer %s cannot be decoded: %s" % (digest, exc))
                while reader.read(1 << 20):     # a decoder may stop at its end mark: the digest covers all
                    pass
                data = None
            else:
                data = head + read_bounded(reader, MAX_SMALL_BLOB, lambda: _ApiError(
                    413, "SIZE_INVALID", "blob %s is no layer and larger than %d bytes" % (digest, MAX_SMALL_BLOB)))
            if reader.hasher.hexdigest() != hexdigest:
                raise _ApiError(400, "DIGEST_INVALID", "the %d bytes uploaded hash to sha256:%s, not %s"
                                % (reader.size, reader.hasher.hexdigest(), digest[:80]))
            if spooled is None:
                with self._lock:
                    self.configs[digest] = data
                self._take(digest, reader.size, None)
                return digest
            layer = self._store(hexdigest, reader.size, spooled)
            self._take(digest, reader.size, layer)
            return digest
        finally:
            if spooled is not None:
                unlink_quietly(spooled.path)

    def _store(self, hexdigest: str, blob_size: int, spooled) -> LayerEntry:
        """Store a decoded layer unless the remote has it (then the stored copy is what the image uses),
        and record what the pushed blob became."""
        present = self.present.get(spooled.oid)
        if present is not None:
            layer = LayerEntry(spooled.oid, spooled.size, present.encoding, present.stored_size)
        else:
            layer = LayerEntry(spooled.oid, spooled.size, spooled.encoding, spooled.stored_size)
            if self.repo.remote.put_file(blob_key(layer.oid, layer.encoding), spooled.path):
                with self._lock:
                    self.stored[layer.oid] = layer.stored_size
            else:       # a concurrent push stored it first: use that copy
                key = blob_key(layer.oid, layer.encoding)
                layer = LayerEntry(layer.oid, layer.size, layer.encoding, self.repo.remote.stat([key])[key].size)
            self.on_stored(layer.oid, layer.stored_size)
        if hexdigest != layer.oid or layer.encoding != "none":
            self.repo.remote.put(pushed_key("sha256:" + hexdigest), PushRecord(blob_size, layer).to_bytes(), overwrite=True)
        return layer

    # -- the manifest --------------------------------------------------------------------------

    def _put_manifest(self, body) -> str:
        data = read_bounded(body, MAX_MANIFEST, lambda: _ApiError(413, "SIZE_INVALID", "manifest too large")) \
            if body is not None else b""
        try:
            manifest = OciManifest.parse(data, None, "the manifest Docker pushed")
        except FormatError as exc:
            raise _ApiError(400, "MANIFEST_INVALID", str(exc))
        if manifest.media_type not in IMAGE_MANIFEST_MEDIA_TYPES or manifest.config is None:
            raise _ApiError(400, "MANIFEST_INVALID", "the engine takes one image manifest, not %s" % manifest.media_type)
        with self._lock:
            missing = [d.digest for d in (manifest.config,) + manifest.layers if d.digest not in self.received]
        for digest in missing:      # Docker skipped what blob_size vouched for; a config stored earlier is read back
            if self.blob_size(digest) is None:
                raise _ApiError(400, "MANIFEST_BLOB_UNKNOWN", "%s was not pushed before the manifest" % digest)
        self.manifest = data
        return "sha256:" + sha256_hex(data)

    def image(self, config_reader: Callable[[str], bytes]) -> Tuple[OciManifest, bytes, List[LayerEntry]]:
        """After Docker's push: (its manifest, the config bytes, the stored layer of each manifest layer).
        `config_reader(hex)` reads a config Docker did not send (the remote had it). Raises FormatError
        when what arrived is not one whole image."""
        if self.manifest is None:
            raise FormatError("Docker's push ended without a manifest")
        manifest = OciManifest.parse(self.manifest, None, "the manifest Docker pushed")
        config = self.configs.get(manifest.config.digest)
        if config is None:
            config = config_reader(parse_digest(manifest.config.digest))
        if "sha256:" + sha256_hex(config) != manifest.config.digest:
            raise FormatError("the image config Docker pushed does not match its digest %s" % manifest.config.digest)
        diff_ids = diff_ids_of_config(config, manifest.config.digest)
        if len(diff_ids) != len(manifest.layers):
            raise FormatError("the image Docker pushed lists %d layers but its config %d" % (len(manifest.layers), len(diff_ids)))
        layers = []
        for descriptor, diff_id in zip(manifest.layers, diff_ids):
            _size, layer = self.received.get(descriptor.digest, (0, None))
            if layer is None or layer.oid != diff_id:
                raise FormatError("layer %s Docker pushed is not sha256:%s, as its config says"
                                  % (descriptor.digest, diff_id))
            layers.append(layer)
        return manifest, config, layers
