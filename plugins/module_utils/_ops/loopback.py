# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A registry endpoint of the engine's own, on loopback, for one `docker push` or `docker pull`.

On Docker's containerd image store, `docker save` and `docker load` move the whole image through
the daemon, slowly; Docker's own push sends only the layers a registry lacks (already compressed)
and its pull fetches only the layers the daemon lacks. So on that store the engine serves the
remote to the daemon as a registry on 127.0.0.1 for the length of one operation:

- push: PushReceiver takes what Docker sends. Each layer is decoded while it arrives (spool_layer,
  as for `docker save`), stored by diff_id and recorded under pushed/ (docs/FORMAT.md), so that the
  next push's existence checks skip it; nothing else is stored. The engine writes config, manifest
  and tag after Docker's push returned, in the save path's order.
- pull: PullServer serves one image: its manifest as dogestry shows it (Manifest.oci_bytes(), the
  daemon's image ID afterwards), its config, and each layer decoded and verified while it streams,
  the last piece held back until the whole layer matched, so Docker never receives a corrupt layer whole.

This is not the accelerator (`dogestry serve`): the engine stays below the front ends, and an endpoint
for one operation of one daemon needs neither tags, nor listings, nor caches.

The endpoint listens on one fixed port when it is free (ENGINE_PORT) and names the image one fixed
way (ENGINE_NAME): containerd labels every blob it pushes or pulls with the registry's host:port and
the repository, once per new pair (a database write each) and for good, so a new pair per operation
would slow every push and grow those labels without bound. The push's tag is a random token, and
only a manifest put under it is taken.

May import _format, _codecs, _storage and _docker.
"""

from __future__ import annotations

import hashlib
import re
import threading
import traceback
import uuid
from typing import Callable, List, Optional
try:
    from cheroot import wsgi as cheroot_wsgi
    HAS_CHEROOT = True
    CHEROOT_IMPORT_ERROR = None
except ImportError:
    HAS_CHEROOT = False
    CHEROOT_IMPORT_ERROR = traceback.format_exc()

from .._docker.load import LoadLayer, verified_chunks
from .._errors import DogestryError
from .._format.keys import sha256_hex
from .._format.manifest import LayerEntry, Manifest
from .._format.oci import OCI_MANIFEST_MEDIA_TYPE
from .._storage.repository import Repository


HEAD = 512                  # bytes that tell a layer (gzip, zstd or tar magic) from a config
MAX_SMALL_BLOB = 16 << 20   # a blob that is not a layer (the image config) is kept in memory up to this
MAX_MANIFEST = 4 << 20
THREADS = 16                # Docker pushes and pulls a few layers at once (5 by default)
ENGINE_PORT = 22377         # beside the accelerator's 22375 and its peer port 22376; a free port when taken
ENGINE_NAME = "dogestry/engine"
BACKLOG = 128              # pending connections the listening socket holds
STOP_WAIT = 0.2            # seconds stop() waits for a busy worker before shutting its connection
POLL = 0.02                 # seconds between cheroot's looks at idle connections (its default 0.5 delays stop)
_ROUTE = re.compile(r"^/v2/(?P<name>[a-z0-9/._-]+?)/(?P<kind>blobs/uploads|blobs|manifests)/(?P<ref>[^/]*)$")


class LoopbackServer:
    """A WSGI app served on 127.0.0.1 (a free port) by cheroot in a background thread; close() stops it."""

    def __init__(self, app, threads: int = THREADS, ports=(ENGINE_PORT, 0)):
        if not HAS_CHEROOT:
            raise DogestryError("the Python package 'cheroot' is required to serve the daemon: pip install cheroot")
        for port in ports:
            # Docker opens a dozen connections at once (each request tries TLS first, then plain http):
            # cheroot's default listen backlog of 5 drops some, and a dropped SYN costs a 1 s retransmit.
            self._server = cheroot_wsgi.Server(("127.0.0.1", port), self._counted(app), numthreads=threads, server_name="dogestry",
                                               timeout=60, request_queue_size=BACKLOG)
            self._server.stats["Enabled"] = False
            self._server.error_log = _quiet     # a body cut short is reported by the engine, in one line
            self._server.expiration_interval = POLL     # stop() waits for one poll of the connections
            # and for its workers: one still reading a connection Docker keeps open would hold stop()
            # for cheroot's default 5 s; the operation is over by then, so its sockets are shut at once
            self._server.shutdown_timeout = STOP_WAIT
            try:
                self._server.prepare()
                break
            except OSError as exc:      # taken (another push, another service): the next one
                if port == ports[-1]:
                    raise DogestryError("cannot listen on 127.0.0.1 for the Docker daemon: %s" % (exc.strerror or exc))
        self.host = "127.0.0.1:%d" % self._server.bind_addr[1]
        self._thread = threading.Thread(target=self._server.serve, name="dogestry-loopback", daemon=True)
        self._thread.start()

    requests = 0        # HTTP requests the daemon made: none after a failed push or pull means it never reached us

    def _counted(self, app):
        def counted(environ, start_response):
            self.requests += 1
            return app(environ, start_response)
        return counted

    def close(self) -> None:
        self._server.stop()
        self._thread.join(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _quiet(*_args, **_kwargs) -> None:
    """cheroot's error log: tracebacks on stderr, where a module's output must stay one JSON document."""


def private_tag() -> str:
    """A tag no other process can guess: the push endpoint takes a manifest only under it."""
    return "push-%s" % uuid.uuid4().hex


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        Exception.__init__(self, message)
        self.status, self.code, self.message = status, code, message


_STATUS = {200: "200 OK", 201: "201 Created", 202: "202 Accepted", 204: "204 No Content", 400: "400 Bad Request",
           404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Payload Too Large", 500: "500 Internal Server Error"}


def _respond(start_response, status: int, headers=(), body: bytes = b"", length: Optional[int] = None):
    """`length`: the Content-Length of a HEAD answer, whose body is empty."""
    start_response(_STATUS.get(status, "%d Status" % status),
                   [("Content-Length", str(len(body) if length is None else length)),
                    ("Docker-Distribution-API-Version", "registry/2.0")] + list(headers))
    return [body]


def only_under(name: str, app):
    """A WSGI app that answers /v2/ and requests under /v2/<name>/ only (404 for anything else)."""
    prefix = "/v2/%s/" % name

    def guarded(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/v2", "/v2/") or path.startswith(prefix):
            return app(environ, start_response)
        body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository here","detail":null}]}'
        return _respond(start_response, 404, [("Content-Type", "application/json")], body)
    return guarded


class _HashingReader:
    """A request body read through: counts and hashes what passes, refuses more than `limit` bytes."""

    def __init__(self, body, limit: int):
        self._body, self._limit = body, limit
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._body.read(size if size is not None and size >= 0 else 1 << 20) if self._body else b""
        self.size += len(data)
        if self.size > self._limit:
            raise _ApiError(413, "SIZE_INVALID", "blob larger than %d bytes" % self._limit)
        self.hasher.update(data)
        return data


class PullServer:
    """The read side of the engine's endpoint for one `docker pull` (a WSGI app): one image, by digest.

    `failures` records why a layer's body was cut short (a BlobCorruptError, a remote error), so the
    engine can say why Docker's pull failed rather than Docker's "unexpected EOF"."""

    def __init__(self, repo: Repository, manifest: Manifest, config: bytes,
                 on_served: Callable[[LayerEntry], None] = lambda layer: None):
        self.repo, self.manifest, self.config, self.on_served = repo, manifest, config, on_served
        self.body = manifest.oci_bytes()
        self.digest = "sha256:" + sha256_hex(self.body)
        self.layers = {"sha256:" + layer.oid: layer for layer in manifest.layers}
        self.failures: List[Exception] = []
        self.failed_layers: List[LayerEntry] = []
        self.served: set = set()       # oids of the layers sent whole (verified)

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        head = method == "HEAD"
        if path in ("/v2", "/v2/"):
            return _respond(start_response, 200, [("Content-Type", "application/json")], b"{}")
        match = _ROUTE.match(path)
        kind, ref = (match.group("kind"), match.group("ref")) if match else (None, None)
        if method not in ("GET", "HEAD") or kind not in ("manifests", "blobs"):
            return _respond(start_response, 405 if match else 404)
        if kind == "manifests" and ref == self.digest:
            headers = [("Content-Type", OCI_MANIFEST_MEDIA_TYPE), ("Docker-Content-Digest", self.digest)]
            return _respond(start_response, 200, headers, b"" if head else self.body, len(self.body))
        if kind == "blobs" and ref == "sha256:" + self.manifest.config_oid:
            headers = [("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", ref)]
            return _respond(start_response, 200, headers, b"" if head else self.config, len(self.config))
        layer = self.layers.get(ref) if kind == "blobs" else None
        if layer is None:
            return _respond(start_response, 404)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(layer.size)),
                                  ("Docker-Content-Digest", ref), ("Docker-Distribution-API-Version", "registry/2.0")])
        return [b""] if head else self._layer_body(layer)

    def _layer_body(self, layer: LayerEntry):
        """The layer decoded from its stored encoding and verified while it streams; the last piece is sent
        only once every byte matched (a mismatch raises instead, and the server cuts the connection)."""
        what = "layer sha256:%s on %s" % (layer.oid, self.repo.url)
        try:
            with self.repo.remote.open(layer.key, layer.stored_size) as stored:
                pending = None
                for chunk in verified_chunks(stored, LoadLayer(layer.oid, layer.size, layer.encoding, None, what)):
                    if pending is not None:
                        yield pending
                    pending = chunk
                if pending is not None:
                    yield pending
        except (DogestryError, OSError) as exc:
            self.failures.append(exc)
            self.failed_layers.append(layer)
            raise
        if layer.oid not in self.served:
            self.served.add(layer.oid)
            self.on_served(layer)
