# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The OCI distribution API over a dogestry remote: request in, Response out. This file routes and
serves reads; pushes are writer.py's (RegistryWriter), and POST /dogestry/pull loads an
image into the local Docker through a callable the front end passes in.

No HTTP server here (server.py is the glue), so every rule is testable without sockets.
An image dogestry_push stored is shown as `Manifest.oci_bytes()`, its layers uncompressed (digest =
diff_id), decoded from their stored encoding while streaming; what was pushed through this API is
served as pushed. Every blob is verified while it streams: the last chunk of a body is held back
until the whole blob has been verified, so a corrupt blob is never received whole. Ranges read
only what they need (_stored_range, _decoded_range: a range cannot be checked on its own).

The front end of the registry: may import every layer below it and the rest of _registry.
"""

from __future__ import annotations

import json
import threading
from typing import Dict, List, Optional, Tuple, Union

from .._errors import BlobCorruptError, DockerError, DogestryError, FormatError, ImageReferenceError, RemoteMissingError, RemoteNotFoundError
from .._format.keys import sha256_hex, split_digest
from .._format.manifest import Manifest
from .._format.oci import Descriptor
from .._format.reference import _TAG, ImageRef
from .._metrics import Metrics
from .._ops.signing import SignatureError
from .._storage.repository import Repository
from .blobs import BlobInfo, BlobReads
from .catalog import Listings
from .manifests import ManifestReads
from .routes import (
    ApiError, Response, _CONTENT_LENGTH, _DIGEST, _LOOSE_ROUTE, _NS, _ROUTE, _UPLOAD_ROUTE, _header, candidate_names, check_path, error_response,
)
from .writer import MAX_MANIFEST, RegistryWriter


INDEX_REFRESH_SECONDS = 5.0     # a digest miss re-reads the tags at most this often


class RegistryApi(ManifestReads, BlobReads, Listings):
    """GET/HEAD of /v2/... over one Repository. Thread-safe: one instance serves every request."""

    MAX_CONFIGS = 1000      # verified image configs kept in memory (kilobytes each)

    def __init__(self, repo: Repository, cache=None, metrics: Optional[Metrics] = None,
                 writer: Optional[RegistryWriter] = None, puller=None, policy=None):
        """`cache`: a _storage/blob_cache.py BlobCache for stored layers (None: every read goes to the remote);
        `writer`: takes pushes (None: the registry is read-only); `puller(image) -> result dict`:
        loads an image from the remote into the local Docker (POST /dogestry/pull?image=NAME:TAG,
        the original's server-side pulls; None: no such endpoint); `policy`: an _ops/signing.py Policy that
        every image manifest served must satisfy (None: serve what is stored)."""
        self.repo = repo
        self.policy = policy
        self.cache = cache
        self.writer = writer
        self.puller = puller
        self._pulling = [threading.Lock() for _lock in range(16)]     # striped by image: bounded memory
        self._reading = [threading.Lock() for _lock in range(16)]     # striped by oid: see _single_flight
        self.metrics = metrics or Metrics()
        self._configs: Dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._manifests: Dict[str, Manifest] = {}       # dogestry manifest oid -> manifest (immutable)
        self._by_digest: Dict[str, str] = {}            # OCI manifest hex -> dogestry manifest oid
        self._blobs: Dict[str, BlobInfo] = {}           # blob hex -> what serves it
        self._refreshed = 0.0

    # -- knowledge of the remote ----------------------------------------------------------

    def _single_flight(self, oid: str):
        """The lock under which one reader fetches a small object (a manifest, a config) that several
        clients ask for at once; the others then find it in memory. Striped: memory stays bounded."""
        return self._reading[int(oid[:8], 16) % len(self._reading)]

    def _learn(self, manifest_oid: str) -> Tuple[Manifest, bytes, str]:
        with self._lock:
            manifest = self._manifests.get(manifest_oid)
        if manifest is None:
            with self._single_flight(manifest_oid):
                with self._lock:
                    manifest = self._manifests.get(manifest_oid)
                if manifest is None:
                    manifest = self.repo.read_manifest(manifest_oid)   # verified against its address
        body = manifest.oci_bytes()
        digest = sha256_hex(body)
        with self._lock:
            self._manifests[manifest_oid] = manifest
            self._by_digest[digest] = manifest_oid
            self._blobs.setdefault(manifest.config_oid, BlobInfo(manifest.config_oid, manifest.config_size,
                                                                 None, manifest))
            for layer in manifest.layers:
                self._blobs.setdefault(layer.oid, BlobInfo(layer.oid, layer.size, layer.encoding, manifest))
        return manifest, body, digest

    def _known(self, table: Dict, hexdigest: str, clock):
        """table[hexdigest], re-reading the tags once (rate-limited) when it is not known yet."""
        with self._lock:
            found = table.get(hexdigest)
        if found is None:
            self._refresh(clock)
            with self._lock:
                found = table.get(hexdigest)
        return found

    def _refresh(self, clock) -> None:
        """Learn every tagged manifest (digest lookups after a restart, blobs of unseen images).

        The format keeps no map from OCI digest to manifest, so this reads every tag; manifests
        are immutable, so only new ones are read, and misses re-read the tags at most every
        INDEX_REFRESH_SECONDS."""
        now = clock()
        with self._lock:
            if now - self._refreshed < INDEX_REFRESH_SECONDS:
                return
            self._refreshed = now
        if not self._holds_images():
            return
        for oid in sorted(set(self.repo.list_tags(malformed={}).values())):     # a malformed tag hides no other
            try:
                self._learn(oid)
            except (RemoteNotFoundError, FormatError, BlobCorruptError):
                continue    # a dangling or broken tag must not hide the others

    def _holds_images(self) -> bool:
        """False while the remote is not a dogestry remote yet (an accelerator set up before the first
        push): every image is then unknown (404), while /healthz says why. A missing bucket raises."""
        try:
            return self.repo.check()
        except RemoteMissingError:
            raise
        except RemoteNotFoundError:
            return False

    def _resolve_tag(self, names: List[str], tag: str) -> Tuple[str, Union[str, Descriptor]]:
        for name in names if self._holds_images() else ():
            target = self.repo.read_target(ImageRef(name, tag))
            if target is not None:
                return name, target
        if not any(self._name_exists(name) for name in names):
            raise ApiError(404, "NAME_UNKNOWN", "repository %s is not on this remote" % names[-1])
        raise ApiError(404, "MANIFEST_UNKNOWN", "%s:%s is not on this remote" % (names[-1], tag))

    def _name_exists(self, name: str) -> bool:
        return self._holds_images() and bool(self.repo.list_targets(name, malformed={}))

    # -- routing ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: Dict[str, str], headers: Dict[str, List[str]],
               clock=None, body=None) -> Response:
        """`headers` keys are lower-case; `query` holds the first value of each parameter; `body` is
        the request body (a file-like object) of writes, of the length in its content-length header."""
        import time
        clock = clock or time.monotonic
        head = method == "HEAD"
        try:
            check_path(path)
            if path == "/dogestry/pull" and self.puller is not None:
                return self._server_side_pull(method, query)
            if method not in ("GET", "HEAD") or _UPLOAD_ROUTE.match(path):
                return self._write(method, path, query, headers, body)
            if path in ("/v2", "/v2/"):
                return self._json({}, head)
            if path == "/healthz":
                return self.health(head)
            if path == "/metrics":
                status, body, content_type = self.metrics.render()
                return Response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))],
                                b"" if head else body, 0 if head else len(body))
            if path == "/v2/_catalog":
                return self._catalog(query, head)
            match = _ROUTE.match(path)
            if not match:
                if _LOOSE_ROUTE.match(path):
                    raise ApiError(400, "NAME_INVALID", "invalid repository name in %r" % path[:200])
                raise ApiError(404, "NOT_FOUND", "no such endpoint: %s" % path[:200])
            names = candidate_names(match.group("name"), self._ns(query))
            kind, ref = match.group("kind"), match.group("ref")
            if kind == "tags":
                if ref != "list":
                    raise ApiError(404, "NOT_FOUND", "no such endpoint: %s" % path[:200])
                return self._tags(names, query, head)
            if kind == "referrers":
                return self._referrers(ref, query, head)
            if kind == "manifests":
                return self._manifest(names, ref, headers.get("accept", []), head, clock)
            return self._blob(ref, headers.get("range", [None])[0], head, clock)
        except ApiError as exc:
            return error_response(exc, head)
        except BlobCorruptError as exc:
            self.metrics.remote_error(exc)
            return error_response(ApiError(500, "UNKNOWN", str(exc)), head)
        except DogestryError as exc:
            self.metrics.remote_error(exc)
            # The remote is unreachable or refused: say so, and let the client retry.
            return error_response(ApiError(503, "UNAVAILABLE", str(exc)), head)

    # -- server-side pulls --------------------------------------------------------------------

    def _server_side_pull(self, method: str, query: Dict[str, str]) -> Response:
        if method != "POST":
            raise ApiError(405, "UNSUPPORTED", "POST /dogestry/pull?image=NAME:TAG loads an image into Docker")
        image = query.get("image")
        if not image or len(image) > 300:
            raise ApiError(400, "NAME_INVALID", "the image query parameter (NAME:TAG or an image ID prefix) is missing")
        # one load of an image at a time: a second request then finds it there
        with self._pulling[hash(image) % len(self._pulling)]:
            try:
                result = self.puller(image)
            except ImageReferenceError as exc:
                raise ApiError(404, "MANIFEST_UNKNOWN", str(exc))
            except SignatureError as exc:
                raise ApiError(403, "DENIED", str(exc))
            except DockerError as exc:
                raise ApiError(502, "UNKNOWN", str(exc))
        return self._json(result, False)

    # -- writes (pushes) ----------------------------------------------------------------------

    def _write(self, method: str, path: str, query: Dict[str, str], headers: Dict[str, List[str]], body) -> Response:
        writer = self.writer
        if writer is None:
            raise ApiError(405, "UNSUPPORTED", "%s is not supported: this accelerator is read-only" % method)
        length = self._content_length(_header(headers, "content-length"), max(writer.max_blob, MAX_MANIFEST))
        upload = _UPLOAD_ROUTE.match(path)
        if upload:
            name, session = upload.group("name"), upload.group("session")
            if method == "POST" and not session:
                return self._start_upload(name, query, body, length)
            if not session:
                raise ApiError(405, "UNSUPPORTED", "%s of %s: start an upload with POST" % (method, path[:200]))
            if method == "GET":
                return self._empty(204, writer.range_headers(name, session, writer.status(name, session)))
            if method == "PATCH":
                size = writer.append(name, session, body, length, _header(headers, "content-range"))
                return self._empty(202, writer.range_headers(name, session, size))
            if method == "PUT":
                return self._blob_created(name, writer.finish(name, session, query.get("digest"), body, length,
                                                              _header(headers, "content-range")))
            if method == "DELETE":
                writer.cancel(name, session)
                return self._empty(204)
            raise ApiError(405, "UNSUPPORTED", "%s is not supported on uploads" % method)
        match = _ROUTE.match(path)
        if not match:
            raise ApiError(404 if not _LOOSE_ROUTE.match(path) else 400, "NAME_INVALID",
                           "no such endpoint for %s: %s" % (method, path[:200]))
        name, kind, ref = match.group("name"), match.group("kind"), match.group("ref")
        if kind == "manifests" and method == "PUT":
            if ":" not in ref and not _TAG.match(ref):
                raise ApiError(400, "TAG_INVALID", "invalid tag %r" % ref[:130])
            digest, manifest = writer.put_manifest(name, ref, _header(headers, "content-type"), body,
                                                   self._thin_manifest_exists, self._vouched)
            extra = [("OCI-Subject", manifest.subject.digest)] if manifest.subject is not None else []
            return self._empty(201, [("Location", "/v2/%s/manifests/%s" % (name, digest)),
                                     ("Docker-Content-Digest", digest)] + extra)
        if kind == "manifests" and method == "DELETE" and _TAG.match(ref):
            if not self._holds_images() or self.repo.read_target(ImageRef(name, ref)) is None:
                raise ApiError(404, "MANIFEST_UNKNOWN", "%s:%s is not on this remote" % (name, ref))
            self.repo.delete_tag(ImageRef(name, ref))
            return self._empty(202)
        raise ApiError(405, "UNSUPPORTED", "%s of %s is not supported: tags are deleted by name, and data by "
                       "dogestry prune" % (method, kind))

    @staticmethod
    def _content_length(text: Optional[str], limit: int) -> Optional[int]:
        """The request body's declared length (None: chunked or none), refused before a byte is read if it is
        not a plain number or is over what any write here takes."""
        if text is None:
            return None
        if not _CONTENT_LENGTH.match(text):
            raise ApiError(400, "SIZE_INVALID", "invalid Content-Length %r" % text[:30])
        if int(text) > limit:
            raise ApiError(413, "SIZE_INVALID", "a body of %s bytes is over what this accelerator takes (%d bytes)"
                           % (text, limit))
        return int(text)

    def _start_upload(self, name: str, query: Dict[str, str], body, length: Optional[int]) -> Response:
        writer = self.writer
        mount = query.get("mount")
        if mount and self._blob_size(self._digest(mount)) is not None:
            return self._blob_created(name, mount)
        session = writer.start(name)
        if query.get("digest") is not None:         # monolithic: the whole blob in the POST
            return self._blob_created(name, writer.finish(name, session, query["digest"], body, length))
        return self._empty(202, writer.range_headers(name, session, 0))

    def _blob_created(self, name: str, digest: str) -> Response:
        return self._empty(201, [("Location", "/v2/%s/blobs/%s" % (name, digest)), ("Docker-Content-Digest", digest)])

    @staticmethod
    def _empty(status: int, extra=()) -> Response:
        return Response(status, [("Content-Length", "0"), ("Docker-Distribution-API-Version", "registry/2.0")]
                        + list(extra), b"", 0)

    @staticmethod
    def _ns(query: Dict[str, str]) -> Optional[str]:
        ns = query.get("ns")
        if ns is None:
            return None
        if not _NS.match(ns) or len(ns) > 255:
            raise ApiError(400, "NAME_INVALID", "invalid ns parameter %r" % ns[:100])
        return ns

    @staticmethod
    def _json(doc, head: bool, status: int = 200, extra=()) -> Response:
        body = json.dumps(doc).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Docker-Distribution-API-Version", "registry/2.0")] + list(extra)
        return Response(status, headers, b"" if head else body, 0 if head else len(body))

    def health(self, head: bool = False, detailed: bool = True) -> Response:
        """/healthz: whether the remote answers (read afresh: it may have gone away, or arrived). Undetailed
        (a client without credentials where they are required: a load balancer, a systemd check) it says
        only ok or unavailable, never where the remote is or why it failed."""
        try:
            Repository(self.repo.remote).check()
        except DogestryError as exc:
            if detailed:
                raise
            self.metrics.remote_error(exc)
            return error_response(ApiError(503, "UNAVAILABLE", "the remote is not available (details for "
                                                               "authenticated clients)"), head)
        return self._json({"status": "ok", "remote": self.repo.url} if detailed else {"status": "ok"}, head)

    @staticmethod
    def _digest(text: str) -> str:
        try:
            return "%s:%s" % split_digest(text)
        except FormatError:
            if _DIGEST.match(text) and text.partition(":")[0] not in ("sha256", "sha512"):
                raise ApiError(400, "DIGEST_INVALID", "unsupported digest algorithm in %r: sha256 or sha512" % text[:80])
            raise ApiError(400, "DIGEST_INVALID", "invalid digest %r" % text[:80])
