# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The OCI distribution API over a dogestry remote: request in, Response out. This file routes and
serves reads; pushes are _registry_push's (RegistryWriter), and POST /dogestry/pull loads an
image into the local Docker through a callable the front end passes in.

No HTTP server here (_server.py is the glue), so every rule is testable without sockets.
An image dogestry_push stored is shown as `Manifest.oci_bytes()`, its layers uncompressed (digest =
diff_id), decoded from their stored encoding while streaming; what was pushed through this API is
served as pushed. Every blob is verified while it streams: the last chunk of a body is held back
until the whole blob has been verified, so a corrupt blob is never received whole. Ranges read
only what they need (_stored_range, _decoded_range: a range cannot be checked on its own).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union
from time import monotonic as _monotonic
from urllib.parse import quote

from ._blob_cache import Uncached, skipped
from ._compress import decoder
from ._docker_archive import CHUNK, LoadLayer, verified_chunks
from ._errors import (
    BlobCorruptError, DockerError, DogestryError, FormatError, ImageReferenceError, RemoteError, RemoteMissingError,
    RemoteNotFoundError,
)
from ._format import (
    OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, Descriptor, ImageRef, LayerEntry, Manifest, blob_key, load_json,
    object_key, referrers_prefix, sha256_hex, split_digest,
)
from ._metrics import Metrics
from ._registry_push import MAX_MANIFEST, SMALL_BLOB, ApiError, RegistryWriter, StoredBlobs
from ._remote import Remote
from ._repository import Repository
from ._signing import SignatureError
from ._verify import read_verified

# distribution's reference grammar for repository paths (no domain: that is the host we are)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_ROUTE = re.compile(r"^/v2/(?P<name>%s(?:/%s)*)/(?P<kind>manifests|blobs|tags|referrers)/(?P<ref>[^/]+)$"
                    % (_COMPONENT, _COMPONENT))
_UPLOAD_ROUTE = re.compile(r"^/v2/(?P<name>%s(?:/%s)*)/blobs/uploads/(?P<session>[0-9a-f]{0,64})$" % (_COMPONENT, _COMPONENT))
_LOOSE_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs|tags|referrers)/(?P<ref>[^/]*)$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_NS = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_LENGTH = re.compile(r"^[0-9]{1,20}$")
MAX_NAME = 255              # distribution's limit on a repository name (so no path component passes NAME_MAX)
MAX_PATH = 2048             # longer request paths are refused before any pattern is matched against them
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
MAX_PAGE = 10000
MAX_REFERRERS = 1000        # descriptors one referrers response lists
PIECE = 256 << 10           # bytes per write to a client
RANGE_PIECE = 4 << 20       # bytes per ranged read of a stored object
INDEX_REFRESH_SECONDS = 5.0     # a digest miss re-reads the tags at most this often


@dataclass
class Response:
    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: Union[bytes, Iterator[bytes]] = b""
    length: int = 0     # bytes the body holds (for logs and metrics)


def error_response(exc: ApiError, head: bool = False) -> Response:
    body = json.dumps({"errors": [{"code": exc.code, "message": exc.message, "detail": None}]}).encode()
    return Response(exc.status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                    + exc.headers, b"" if head else body, 0 if head else len(body))


def _header(headers: Dict[str, List[str]], name: str) -> Optional[str]:
    values = headers.get(name)
    return values[0] if values else None


def _at_most(digits: str, limit: int) -> int:
    """int(digits), capped at `limit` (Python's int() refuses strings of over 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return limit if len(digits) > len(str(limit)) else min(int(digits), limit)


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """'bytes=a-b' -> (start, end inclusive) within size; None without a header; ApiError 416 if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    bad = ApiError(416, "BLOB_UNKNOWN", "range %r not satisfiable for %d bytes" % (header[:100], size),
                   [("Content-Range", "bytes */%d" % size)])
    if not match or (not match.group(1) and not match.group(2)):
        raise bad
    first, last = match.group(1), match.group(2)
    if not first:                       # suffix range: the last N bytes
        count = _at_most(last, size)
        if count == 0 or size == 0:
            raise bad
        return size - count, size - 1
    start = _at_most(first, size)
    end = _at_most(last, size - 1) if last else size - 1
    if start >= size or start > end:
        raise bad
    return start, end


def candidate_names(name: str, ns: Optional[str]) -> List[str]:
    """Stored names a request path may mean: mirrors of Docker Hub ask for library/x, meaning x;
    containerd mirrors (hosts.toml) add ?ns=<registry> for other registries."""
    names = []
    if ns and ns not in DOCKER_HUB:
        names.append("%s/%s" % (ns, name))
    names.append(name)
    if name.startswith("library/") and (not ns or ns in DOCKER_HUB):
        names.append(name[len("library/"):])
    return names


def accepts_oci(accept: List[str]) -> bool:
    if not accept:
        return True
    types = {part.split(";")[0].strip() for value in accept for part in value.split(",")}
    return bool(types & {OCI_MANIFEST_MEDIA_TYPE, "*/*", "application/*"})


def _held_back(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield every chunk but the last until the source has finished without raising."""
    pending = None
    for chunk in chunks:
        if pending is not None:
            yield pending
        pending = chunk
    if pending is not None:
        yield pending


def _pieces(chunks: Iterator[bytes], size: int = PIECE) -> Iterator[bytes]:
    """Split decoded blocks (lz4 blocks are up to 4 MiB) so a thread holds back little."""
    for chunk in chunks:
        if len(chunk) <= size:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), size):
            yield bytes(view[start:start + size])


def _hashed(chunks: Iterator[bytes], digest: str, what: str) -> Iterator[bytes]:
    """Pass a stored blob through, raising BlobCorruptError at the end if it is not `digest`."""
    algorithm, expected = split_digest(digest)
    hasher = hashlib.new(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk
    if hasher.hexdigest() != expected:
        raise BlobCorruptError("%s is corrupt: its content hashes to %s:%s" % (what, algorithm, hasher.hexdigest()))


def _read_all(reader, size: int = PIECE) -> Iterator[bytes]:
    return iter(lambda: reader.read(size), b"")


def _then(chunks: Iterator[bytes], action) -> Iterator[bytes]:
    yield from chunks
    action()


def _exactly(reader, count: int, what: str) -> Iterator[bytes]:
    """The next `count` bytes of `reader`; BlobCorruptError if it ends before."""
    while count:
        data = reader.read(min(count, PIECE))
        if not data:
            raise BlobCorruptError("%s ends %d bytes before its recorded size" % (what, count))
        count -= len(data)
        yield data


def _decoded_range(stored, layer: LoadLayer, start: int, end: int) -> Iterator[bytes]:
    """Bytes start..end of a stored layer's decoded content, decoding no further than `end`."""
    dec = decoder(layer.encoding, layer.what)
    offset = 0
    while offset <= end:
        chunk = stored.read(CHUNK)
        for data in dec.decode(chunk) if chunk else (dec.finish(),):
            first, last = max(start - offset, 0), min(end + 1 - offset, len(data))
            if first < last:
                yield data[first:last]
            offset += len(data)
            if offset > end:
                return
        if not chunk:
            raise BlobCorruptError("%s is corrupt: it decodes to %d bytes, not %d" % (layer.what, offset, layer.size))


@dataclass(frozen=True)
class BlobInfo:
    oid: str
    size: int
    encoding: Optional[str]     # None: the image config (stored raw, read whole)
    manifest: Manifest


class RegistryApi:
    """GET/HEAD of /v2/... over one Repository. Thread-safe: one instance serves every request."""

    MAX_CONFIGS = 1000      # verified image configs kept in memory (kilobytes each)

    def __init__(self, repo: Repository, cache=None, metrics: Optional[Metrics] = None,
                 writer: Optional[RegistryWriter] = None, puller=None, policy=None):
        """`cache`: a _blob_cache.BlobCache for stored layers (None: every read goes to the remote);
        `writer`: takes pushes (None: the registry is read-only); `puller(image) -> result dict`:
        loads an image from the remote into the local Docker (POST /dogestry/pull?image=NAME:TAG,
        the original's server-side pulls; None: no such endpoint); `policy`: a _signing.Policy that
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
            self._check_path(path)
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

    @staticmethod
    def _check_path(path: str) -> None:
        """A path too long to be a request of this API, or a repository name over MAX_NAME: 400 before
        the remote sees it (a name component over the filesystem's NAME_MAX would fail there)."""
        if len(path) > MAX_PATH:
            raise ApiError(400, "NAME_INVALID", "request path of %d characters: longer than any this registry answers"
                           % len(path))
        route = _ROUTE.match(path) or _UPLOAD_ROUTE.match(path)
        if route and len(route.group("name")) > MAX_NAME:
            raise ApiError(400, "NAME_INVALID", "repository name of %d characters: at most %d"
                           % (len(route.group("name")), MAX_NAME))

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

    def _blob_size(self, digest: str) -> Optional[int]:
        vouched = self._vouched(digest)
        return vouched[0] if vouched is not None else None

    def _vouched(self, digest: str) -> Optional[Tuple[int, str]]:
        """(size, key) of a blob this registry vouches for to a push (a mount, the blobs a manifest names):
        stored as pushed and still what was pushed, or a layer or config of a stored image, stored whole."""
        key = object_key(digest)
        found = self.repo.remote.stat([key]).get(key)
        if found is not None and self._stored_blobs().vouches(digest, found.size):
            return found.size, key
        return self._image_blob(digest)

    def _image_blob(self, digest: str) -> Optional[Tuple[int, str]]:
        """(size, key) of a layer or config of a stored image, stored whole: its manifest tells what it was
        stored as (no push record needed)."""
        info = self._known(self._blobs, digest[7:], _monotonic) if digest.startswith("sha256:") else None
        return (info.size, blob_key(info.oid, info.encoding or "none")) if info is not None and self._stored(info) else None

    def _stored_blobs(self) -> StoredBlobs:
        return self.writer.blobs if self.writer is not None else StoredBlobs(self.repo)

    def _thin_manifest_exists(self, digest: str) -> bool:
        """An index may name an image dogestry_push stored, by the digest of its Manifest.oci_bytes()."""
        return digest.startswith("sha256:") and self._known(self._by_digest, digest[7:], _monotonic) is not None

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
    def _page(items: List[str], query: Dict[str, str]) -> Tuple[List[str], bool]:
        last = query.get("last")
        if last:
            items = [item for item in items if item > last]
        n = query.get("n")
        if n is None or n == "":
            return items, False
        if not n.isdigit():
            raise ApiError(400, "PAGINATION_NUMBER_INVALID", "n must be a number, got %r" % n[:50])
        count = min(int(n), MAX_PAGE)
        return items[:count], len(items) > count

    def _tags(self, names: List[str], query: Dict[str, str], head: bool) -> Response:
        for name in names if self._holds_images() else ():
            tags = sorted(ref.tag for ref in self.repo.list_targets(name, malformed={}))     # served: the readable ones
            if tags:
                page, more = self._page(tags, query)
                extra = []
                if more and page:
                    extra.append(("Link", '</v2/%s/tags/list?n=%s&last=%s>; rel="next"'
                                  % (name, query["n"], quote(page[-1]))))
                return self._json({"name": name, "tags": page}, head, extra=extra)
        raise ApiError(404, "NAME_UNKNOWN", "repository %s is not on this remote" % names[-1])

    def _catalog(self, query: Dict[str, str], head: bool) -> Response:
        names = sorted({ref.name for ref in self.repo.list_targets(malformed={})}) if self._holds_images() else []
        page, more = self._page(names, query)
        extra = []
        if more and page:
            extra.append(("Link", '</v2/_catalog?n=%s&last=%s>; rel="next"' % (query["n"], quote(page[-1]))))
        return self._json({"repositories": page}, head, extra=extra)

    def _manifest(self, names: List[str], ref: str, accept: List[str], head: bool, clock) -> Response:
        what = "%s%s%s" % (names[-1], "@" if ":" in ref else ":", ref)     # for a refusal's message
        if ":" in ref:
            digest = self._digest(ref)
            with self._lock:       # an image this API has shown already: no remote request
                target: Union[str, Descriptor, None] = self._by_digest.get(digest[7:]) if digest.startswith("sha256:") else None
            if target is None and self._holds_images():
                try:
                    return self._verbatim_manifest(Descriptor("", digest, 0), head, what)
                except RemoteNotFoundError:
                    pass
                if digest.startswith("sha256:"):
                    target = self._known(self._by_digest, digest[7:], clock)
            if target is None:
                raise ApiError(404, "MANIFEST_UNKNOWN", "manifest %s is not on this remote" % ref)
        else:
            if not _TAG.match(ref):
                raise ApiError(400, "MANIFEST_INVALID", "invalid tag %r" % ref[:130])
            _name, target = self._resolve_tag(names, ref)
            if isinstance(target, Descriptor):
                try:
                    return self._verbatim_manifest(target, head, what)
                except RemoteNotFoundError:
                    raise ApiError(404, "MANIFEST_UNKNOWN", "tag %s names manifest %s, which is missing from the "
                                   "remote" % (ref, target.digest))
        _manifest, body, digest = self._learn(target)
        if not accepts_oci(accept):
            raise ApiError(404, "MANIFEST_UNKNOWN",
                           "the image is served only as %s, which the Accept header leaves out" % OCI_MANIFEST_MEDIA_TYPE)
        self._admit("sha256:" + digest, None, what)
        return self._manifest_response(OCI_MANIFEST_MEDIA_TYPE, "sha256:" + digest, body, head)

    def _verbatim_manifest(self, target: Descriptor, head: bool, what: str) -> Response:
        """A manifest, index or artifact stored as pushed (read and verified; RemoteNotFoundError if absent)."""
        manifest = self.repo.read_oci_manifest(target.digest)
        self._admit(target.digest, manifest, what)
        return self._manifest_response(manifest.media_type, target.digest, manifest.data, head)

    def _admit(self, digest: str, manifest, what: str) -> None:
        """With a signature policy, an image Docker could run is served only if a trusted key signed it (or a
        signed index served here names it): 403 DENIED, saying why. Signatures themselves stay readable."""
        if self.policy is not None:
            try:
                self.policy.admit(self.repo, digest, manifest, what)
            except SignatureError as exc:
                # Docker shows a HEAD's status only: the reason goes to the accelerator's log too
                logging.getLogger("dogestry.serve").warning("refused: %s", exc)
                raise ApiError(403, "DENIED", str(exc))

    @staticmethod
    def _manifest_response(media_type: str, digest: str, body: bytes, head: bool) -> Response:
        headers = [("Content-Type", media_type), ("Content-Length", str(len(body))),
                   ("Docker-Content-Digest", digest), ("ETag", '"%s"' % digest),
                   ("Docker-Distribution-API-Version", "registry/2.0")]
        return Response(200, headers, b"" if head else body, 0 if head else len(body))

    def _referrers(self, ref: str, query: Dict[str, str], head: bool) -> Response:
        """The manifests whose subject is `ref` (an index, possibly empty), filtered by artifactType."""
        digest = self._digest(ref)
        wanted = query.get("artifactType")
        found = []
        if self._holds_images():
            for info in itertools.islice(self.repo.remote.list(referrers_prefix(digest)), MAX_REFERRERS):
                try:
                    doc = load_json(self.repo.remote.get(info.key))
                    descriptor = Descriptor.from_doc(doc, ("artifactType", "annotations"))
                except (ValueError, FormatError, RemoteNotFoundError):
                    continue        # a damaged record hides only itself
                if wanted is None or descriptor.fields.get("artifactType") == wanted:
                    found.append(descriptor.to_doc())
        extra = [("OCI-Filters-Applied", "artifactType")] if wanted is not None else []
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": found}).encode()
        headers = [("Content-Type", OCI_INDEX_MEDIA_TYPE), ("Content-Length", str(len(body))),
                   ("Docker-Distribution-API-Version", "registry/2.0")] + extra
        return Response(200, headers, b"" if head else body, 0 if head else len(body))

    @staticmethod
    def _digest(text: str) -> str:
        try:
            return "%s:%s" % split_digest(text)
        except FormatError:
            if _DIGEST.match(text) and text.partition(":")[0] not in ("sha256", "sha512"):
                raise ApiError(400, "DIGEST_INVALID", "unsupported digest algorithm in %r: sha256 or sha512" % text[:80])
            raise ApiError(400, "DIGEST_INVALID", "invalid digest %r" % text[:80])

    def _blob(self, ref: str, range_header: Optional[str], head: bool, clock) -> Response:
        digest = self._digest(ref)
        hexdigest = digest.partition(":")[2]
        with self._lock:
            info = self._blobs.get(hexdigest) if digest.startswith("sha256:") else None
        if info is None and self._holds_images():
            key = object_key(digest)
            stored = self.repo.remote.stat([key]).get(key)
            if stored is not None:
                return self._verbatim_blob(digest, key, stored.size, range_header, head)
            if digest.startswith("sha256:"):
                info = self._known(self._blobs, hexdigest, clock)
        if info is None:
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is not on this remote" % ref)
        if head and not self._stored(info):
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is missing from the remote" % ref)
        span = parse_range(range_header, info.size)
        start, end = span if span else (0, info.size - 1)
        length = end - start + 1 if info.size else 0
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)),
                   ("Docker-Content-Digest", "sha256:" + info.oid), ("Accept-Ranges", "bytes"),
                   ("ETag", '"sha256:%s"' % info.oid), ("Docker-Distribution-API-Version", "registry/2.0")]
        status = 200
        if span:
            status = 206
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, info.size)))
        if head:
            return Response(status, headers, b"", 0)
        if info.encoding is None:
            config = self._config(info.manifest)
            body = config[start:end + 1] if span else config
            return Response(status, headers, body, len(body))
        key = blob_key(info.oid, info.encoding)
        layer = LoadLayer(info.oid, info.size, info.encoding, None, "layer sha256:%s on %s" % (info.oid, self.repo.url))
        try:
            if span and self.cache is None:
                # Decoded from the remote up to the range's last byte, unverified: only the whole layer
                # can be checked, and a client that asks for a range checks the whole it assembles.
                stored = Uncached(self.repo.remote.open(key))
            else:
                # Through the cache: a range is cut from a verified entry, or from the one fetch of the
                # blob in flight, its last piece held back until that fetch has verified the whole.
                stored = self._open_stored(key, self._stored_size(info), lambda reader: verified_chunks(reader, layer))
        except RemoteNotFoundError:
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is missing from the remote" % ref)
        if span:
            chunks = _then(_decoded_range(stored, layer, start, end), stored.verified)
        elif stored.verified_reads:      # the cache checks every byte this reader reads: decode only
            chunks = _then(_decoded_range(stored, layer, 0, info.size - 1), stored.verified)
        else:
            chunks = verified_chunks(stored, layer)
        return Response(status, headers, self._served(stored, _pieces(chunks)), length)

    def _verbatim_blob(self, digest: str, key: str, size: int, range_header: Optional[str], head: bool) -> Response:
        """A blob stored as pushed: streamed from the remote (through the cache), verified as it goes."""
        if head and not (self._stored_blobs().vouches(digest, size)       # a push would skip sending it
                         or (self._image_blob(digest) or (0, None))[1] == key):
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s on this remote is damaged: push it again" % digest)
        span = parse_range(range_header, size)
        start, end = span if span else (0, size - 1)
        length = end - start + 1 if size else 0
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)),
                   ("Docker-Content-Digest", digest), ("Accept-Ranges", "bytes"), ("ETag", '"%s"' % digest),
                   ("Docker-Distribution-API-Version", "registry/2.0")]
        if span:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        status = 206 if span else 200
        if head:
            return Response(status, headers, b"", 0)

        if span:
            return Response(status, headers, self._served(*self._stored_range(key, start, end)), length)
        what = "blob %s on %s" % (digest, self.repo.url)
        stored = self._open_stored(key, size, lambda reader: _hashed(_read_all(reader), digest, what))
        chunks = _pieces(_read_all(stored))
        chunks = _then(chunks, stored.verified) if stored.verified_reads else _hashed(chunks, digest, what)
        return Response(status, headers, self._served(stored, chunks), length)

    def _open_stored(self, key: str, size: Optional[int], verifier):
        """A reader of a stored object: through the cache (which fetches it once, and keeps it if `verifier`
        passes), or straight from the remote."""
        if self.cache is None:
            return Uncached(self.repo.remote.open(key, size=size))
        return self.cache.open(key, lambda: self.repo.remote.open(key, size=size), verifier)

    def _stored_range(self, key: str, start: int, end: int):
        """(reader, chunks) of bytes start..end of a blob stored as pushed: from its cache entry (verified when
        it was cached) or by ranged reads of the stored object. A range cannot be checked against the
        blob's digest without the rest of the blob; the spec lets a registry serve ranges of what it
        stores, and the client that asks for ranges verifies the whole it puts together, so no more of
        the blob is read than the range."""
        entry = self.cache.open_cached(key) if self.cache is not None else None
        if entry is not None:
            entry.seek(start)
            return entry, _exactly(entry, end - start + 1, key)
        remote = self.repo.remote
        if type(remote).get_range is Remote.get_range:
            # the interface's fallback get_range streams from byte 0 at each call: one stream, skipped to start
            reader = Uncached(remote.open(key))
            return reader, _exactly(skipped(reader, start), end - start + 1, key)
        pieces = (remote.get_range(key, first, min(first + RANGE_PIECE, end + 1) - 1)
                  for first in range(start, end + 1, RANGE_PIECE))
        return None, _pieces(pieces)

    def _stored(self, info: BlobInfo) -> bool:
        """The remote still holds the blob whole. A HEAD answers what a push will rely on (a blob it need not
        send), so it is checked, not taken from memory: a prune may have removed an untagged image's blobs,
        and a damaged copy must be sent again. Its size must be the stored size its manifest gives; a small
        blob is read and verified."""
        key = blob_key(info.oid, info.encoding or "none")
        found = self.repo.remote.stat([key]).get(key)
        expected = info.manifest.config_size if info.encoding is None else self._stored_size(info)
        if found is None or (expected is not None and found.size != expected):
            return False
        if found.size > SMALL_BLOB:
            return True
        layer = LayerEntry(info.oid, info.size, info.encoding or "none", found.size)
        try:
            if info.encoding is None:
                return sha256_hex(self.repo.remote.get(key)) == info.oid
            read_verified(self.repo, layer, "layer sha256:%s on %s" % (info.oid, self.repo.url))
            return True
        except (BlobCorruptError, RemoteNotFoundError, FormatError):
            return False

    @staticmethod
    def _stored_size(info: BlobInfo) -> Optional[int]:
        for layer in info.manifest.layers:
            if layer.oid == info.oid and layer.encoding == info.encoding:
                return layer.stored_size or None
        return None

    def _served(self, stored, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Send what `chunks` yields (read from `stored`), the last piece only once they all were read
        without error: a blob that fails verification (BlobCorruptError) is never received whole."""
        source = getattr(stored, "source", "remote")
        try:
            for piece in _held_back(chunks):
                self.metrics.served_bytes(source, len(piece))
                yield piece
        except BlobCorruptError as exc:
            self.metrics.remote_error(exc)
            if stored is not None:
                stored.discard()        # a cache entry that went bad: the next request refetches
            raise
        except RemoteError as exc:
            self.metrics.remote_error(exc)
            raise
        finally:
            if stored is not None:
                stored.close()

    def _config(self, manifest: Manifest) -> bytes:
        with self._lock:
            config = self._configs.get(manifest.config_oid)
        if config is None:
            with self._single_flight(manifest.config_oid):
                with self._lock:
                    config = self._configs.get(manifest.config_oid)
                if config is None:
                    config = self.repo.read_config(manifest)       # verified before a byte is sent
                    with self._lock:
                        if len(self._configs) >= self.MAX_CONFIGS:
                            self._configs.pop(next(iter(self._configs)))
                        self._configs[manifest.config_oid] = config
        return config
