# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The peer side of a host: answers other hosts' reads of objects it holds or is fetching.

May import _errors, _format, _storage, _metrics and the rest of _peers.
"""

from __future__ import annotations

import hmac
import json
import random
import threading
import time
from typing import Iterator, List, Optional, Tuple

from .._errors import BlobCorruptError, DogestryError, RemoteError, RemoteNotFoundError
from .._format.content_keys import peer_key
from .client import PeerClient
from .config import LOG, PIECE, PREFIX, verifier_for
from .policy import Holders, SERVED, Uploads, answer
from .transport import printable


# ---- the peer endpoint ----------------------------------------------------------------------

_REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 206: "Partial Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            416: "Range Not Satisfiable", 502: "Bad Gateway", 503: "Service Unavailable"}


def _error(status: int, code: str, message: str, extra=()) -> Tuple[int, List[Tuple[str, str]], List[bytes]]:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + list(extra), [body]


class PeerApp:
    """The WSGI app of the peer listener: GET /peer/v1/<key> (an object as stored, from the cache or, as its
    owner, through one fetch from the remote), POST /peer/v1/holders/<key> (a peer holds it now),
    POST /peer/v1/warm/<key> (fetch it into the cache). Nothing else: not the registry API."""

    def __init__(self, client: PeerClient, cache, rng=None):
        self.client, self.cache = client, cache
        self.config, self.metrics = client.config, client.metrics
        self.uploads = Uploads(client.settings.max_uploads)
        self.holders = Holders()
        self.rng = rng or random.Random()
        self._secret = ("Bearer " + client.config.secret).encode()
        self._known = set(client.config.peers)

    def __call__(self, environ, start_response):
        started = time.monotonic()
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        status, headers, body = self._handle(method, path, environ)
        write = start_response("%d %s" % (status, _REASONS.get(status, "")), headers)
        if status in (200, 206):
            # The head now, not with the first byte of the body: the asker's answer timeout (the hedge) judges
            # whether this host answers, not how soon the remote's first bytes reach it.
            write(b"")

        def done(sent, failed):
            LOG.info('peer %s "%s %s" %d %d %.3fs %s', environ.get("REMOTE_ADDR", "-"), printable(method, 20),
                     printable(path), status, sent, time.monotonic() - started,
                     "aborted: %s" % printable(str(failed)) if failed else "ok")
        return _Sent(body, done, self.metrics.peer_sent if status in (200, 206) else (lambda count: None))

    def _handle(self, method: str, path: str, environ):
        authorization = (environ.get("HTTP_AUTHORIZATION") or "").encode("latin-1", "replace")
        if not hmac.compare_digest(authorization, self._secret):
            self.metrics.peer_answer("refused")
            return _error(401, "UNAUTHORIZED", "peer requests need the fleet's secret",
                          [("WWW-Authenticate", 'Bearer realm="dogestry-peers"')])
        if not path.startswith(PREFIX):
            return _error(404, "NOT_FOUND", "this port answers only peer requests (%s...)" % PREFIX)
        rest = path[len(PREFIX):]
        verb, _sep, key = rest.partition("/") if rest.startswith(("holders/", "warm/")) else ("", "", rest)
        if peer_key(key) is None:
            return _error(400, "NAME_INVALID", "not a content-addressed key: %s" % key[:200])
        asker = environ.get("HTTP_X_DOGESTRY_PEER") or ""
        size = environ.get("HTTP_X_DOGESTRY_SIZE")
        size = int(size) if size and size.isdigit() and len(size) < 20 else None
        if verb == "holders" and method == "POST":
            if asker not in self._known:
                return _error(403, "DENIED", "%s is not a peer of this fleet" % asker[:200])
            self.holders.add(key, asker)
            return 204, [("Content-Length", "0")], []
        if verb == "warm" and method == "POST":
            return self._warm(key, size)
        if verb or method != "GET":
            return _error(405, "UNSUPPORTED", "%s of %s is not a peer request" % (method, path[:200]))
        mode = environ.get("HTTP_X_DOGESTRY_PEER_MODE") or "holder"
        start = _range_start(environ.get("HTTP_RANGE"))
        if start is None:
            return _error(416, "RANGE_INVALID", "peers ask for bytes=N- ranges only")
        return self._object(key, mode, size, start, asker)

    def _object(self, key: str, mode: str, size: Optional[int], start: int, asker: str):
        # No slot, or this host's own copy still coming from peers (it could send nothing until that copy is
        # verified, and the asker would take the silence for a stall): busy, naming the holders it knows.
        if (self.cache.hidden(key) and key not in self.cache) or not self.uploads.start():
            self.metrics.peer_answer("busy")
            doc = {"holders": self.holders.offer(key, self.rng, self.client.settings.holders_offered, [asker]),
                   "retry_after": self.client.settings.first_retry}
            body = json.dumps(doc).encode()
            return 503, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], [body]
        try:
            entry = self.cache.open_cached(key)
            if answer(mode, entry is not None, True) != SERVED:
                self.uploads.end()
                self.metrics.peer_answer("missing")
                return _error(404, "BLOB_UNKNOWN", "not held here")
            if entry is not None:
                reader, total = entry, entry.size
            else:
                what = "%s on %s (fetched for peers)" % (key, self.client.remote.url)
                reader = self.cache.open(key, lambda: self.client.remote_reader(key, size), verifier_for(key, what))
                total = size
        except RemoteNotFoundError:
            self.uploads.end()
            self.metrics.peer_answer("missing")
            return _error(404, "BLOB_UNKNOWN", "the remote does not hold %s" % key)
        except (RemoteError, BlobCorruptError) as exc:
            self.uploads.end()
            return _error(502, "UNAVAILABLE", "reading the remote failed: %s" % exc)
        except BaseException:
            self.uploads.end()
            raise
        if total is not None and start > total:
            reader.close()
            self.uploads.end()
            return _error(416, "RANGE_INVALID", "byte %d is past the end (%d bytes)" % (start, total))
        self.metrics.peer_answer("served")
        headers = [("Content-Type", "application/octet-stream")]
        if total is not None:
            headers.append(("Content-Length", str(total - start)))
        if start:
            headers.append(("Content-Range", "bytes %d-%d/%s" % (start, max(total or 0, start + 1) - 1,
                                                                 total if total is not None else "*")))
        return 206 if start else 200, headers, self._stream(reader, start)

    def _stream(self, reader, start: int) -> Iterator[bytes]:
        """The object's bytes from `start` (skipped here, after the head was sent: a follower of a fetch
        gets there at the fetch's pace), the last piece only once the fetch verified the whole (a reader of
        a cache entry: verified when it was cached): an honest peer never hands out a whole wrong object."""
        try:
            if start and hasattr(reader, "seek"):
                reader.seek(start)
            else:
                _skip(reader, start)
            pending = None
            for piece in iter(lambda: reader.read(PIECE), b""):
                if pending is not None:
                    yield pending
                pending = piece
            reader.verified()
            if pending is not None:
                yield pending
        finally:
            reader.close()
            self.uploads.end()

    def _warm(self, key: str, size: Optional[int]):
        if key in self.cache:
            return 200, [("Content-Length", "0")], []
        what = "%s on %s (warmed for peers)" % (key, self.client.remote.url)

        def fetch():
            try:
                with self.cache.open(key, lambda: self.client.remote_reader(key, size),
                                     verifier_for(key, what)) as reader:
                    while reader.read(1 << 20):
                        pass
                    reader.verified()
            except DogestryError as exc:
                LOG.warning("warming %s: %s", key, exc)
        threading.Thread(target=fetch, daemon=True, name="dogestry-warm").start()
        return 202, [("Content-Length", "0")], []


def _range_start(header: Optional[str]) -> Optional[int]:
    if not header:
        return 0
    header = header.strip()
    if not header.startswith("bytes=") or not header.endswith("-") or not header[6:-1].isdigit() or len(header) > 30:
        return None
    return int(header[6:-1])


def _skip(reader, count: int) -> None:
    while count:
        data = reader.read(min(count, PIECE))
        if not data:
            return
        count -= len(data)


class _Sent:
    """A response body that counts what was sent and reports once the server is done with it."""

    def __init__(self, body, done, count):
        self._body, self._done, self._count = body, done, count
        self.sent, self.failed = 0, None

    def __iter__(self):
        try:
            for chunk in self._body:
                self.sent += len(chunk)
                self._count(len(chunk))
                yield chunk
        except Exception as exc:
            self.failed = exc
            raise

    def close(self):
        close = getattr(self._body, "close", None)
        if close:
            close()
        self._done(self.sent, self.failed)
