# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Fleet peers: the accelerators of a fleet as a remote in front of the remote.

For a content-addressed object it lacks (_peer_policy.PEER_KEY: blobs, manifests), a host asks the
object's owner among the live peers (rendezvous hashing, _peer_policy); the owner reads it from the
remote once, through its blob cache, and serves every host that asks; hosts that fetched and
verified it serve it too, when the owner is busy. Objects travel as stored (lz4 layers, blobs as
pushed) and are verified by the receiver as if they came from the remote: a peer is never trusted.
Bytes from peers are read into a blob cache that shows them to nobody until the whole object is
verified (_blob_cache); a peer that served wrong bytes is skipped for a while (PeerHealth) and the
object is read from the remote, so nothing unverified reaches Docker or a cache.

A dead peer costs little: a connect timeout of a few hundred milliseconds, an answer timeout after
which the next source is asked (the hedge), and a short memory of failed peers; a body that breaks
off goes on, from the byte it reached, at the next owner or the remote. The remote is always the
last source: a pull never fails because a peer is down, slow or lying.

Transport: HTTPS between peers, with a shared fleet secret (Authorization: Bearer), on a listener
of its own that answers only these requests (PeerApp; `dogestry serve --peer-listen`). Docker keeps
talking to its own accelerator on loopback. The peers file (JSON, written by the accelerator role):

    {"self": "https://10.0.0.1:22376", "peers": ["https://10.0.0.1:22376", "https://10.0.0.2:22376"],
     "ca_file": "/etc/dogestry/peer-ca.pem", "secret": "...", "settings": {"max_uploads": 4}}
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import queue
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from ._compress import decoder
from ._errors import BlobCorruptError, DogestryError, RemoteError, RemoteNotFoundError
from ._peer_policy import (
    BUSY, FAILED, MISSING, SERVED, AnswerTimes, Fetch, Holders, PeerHealth, Settings, Step, Uploads, answer, peer_key,
    ranked,
)
from ._remote import MAX_SMALL_OBJECT, Reader, Remote, read_bounded

LOG = logging.getLogger("dogestry.peers")
PREFIX = "/peer/v1/"
PIECE = 256 << 10           # bytes per read from a peer, and per write to one
RANGE_PIECE = 8 << 20       # bytes per ranged read of the remote when a body goes on from the remote
MIN_SECRET = 16             # characters of the fleet secret, at least
POOL = 4                    # idle connections kept per peer


class PeerConfigError(DogestryError):
    """The peers file is missing, unreadable or malformed."""


@dataclass
class PeerConfig:
    peers: List[str]
    me: Optional[str]
    ca_file: Optional[str]
    secret: str
    settings: Settings = field(default_factory=Settings)

    @classmethod
    def from_file(cls, path: str, as_peer: bool = True) -> "PeerConfig":
        """The peers file. `as_peer`: this process serves peers (an accelerator) and is "self" in it; a
        client that is no peer (`dogestry pull`) ignores "self" and asks every peer, its own host's too."""
        try:
            with open(path, "rb") as handle:
                doc = json.loads(handle.read(1 << 20).decode("utf-8"))
        except OSError as exc:
            raise PeerConfigError("peers file %s: %s" % (path, exc.strerror or exc))
        except ValueError as exc:
            raise PeerConfigError("peers file %s is not JSON: %s" % (path, exc))
        where = "peers file %s" % path
        if not isinstance(doc, dict):
            raise PeerConfigError("%s: expected a JSON object" % where)
        unknown = set(doc) - {"self", "peers", "ca_file", "secret", "settings"}
        if unknown:
            raise PeerConfigError("%s: unknown field(s) %s" % (where, ", ".join(sorted(unknown))))
        peers = doc.get("peers")
        if not isinstance(peers, list) or not all(isinstance(peer, str) for peer in peers):
            raise PeerConfigError("%s: \"peers\" must be a list of https://HOST:PORT URLs" % where)
        me = doc.get("self") if as_peer else None
        peers = [peer_url(peer, where) for peer in peers]
        if me is not None:
            me = peer_url(me, where)
            peers = [peer for peer in peers if peer != me]
        secret = doc.get("secret")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET or any(c in secret for c in "\r\n"):
            raise PeerConfigError("%s: \"secret\" must be one line of at least %d characters, shared by the fleet"
                                  % (where, MIN_SECRET))
        ca_file = doc.get("ca_file")
        if ca_file is not None and not (isinstance(ca_file, str) and os.path.isfile(ca_file)):
            raise PeerConfigError("%s: \"ca_file\" %r is not a file" % (where, ca_file))
        settings = doc.get("settings") or {}
        if not isinstance(settings, dict) or set(settings) - set(Settings.__dataclass_fields__):
            raise PeerConfigError("%s: \"settings\" takes %s" % (where, ", ".join(sorted(Settings.__dataclass_fields__))))
        try:
            return cls(sorted(set(peers)), me, ca_file, secret, Settings.from_doc(settings))
        except TypeError as exc:
            raise PeerConfigError("%s: %s" % (where, exc))


def peer_url(text: str, where: str = "peer") -> str:
    """'https://HOST:PORT' (a bare HOST:PORT means https), normalized; PeerConfigError otherwise."""
    text = text.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "https" or not parts.hostname or not port or parts.path not in ("", "/") or parts.query:
        raise PeerConfigError("%s: %r is not a peer address (https://HOST:PORT)" % (where, text))
    host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
    return "https://%s:%d" % (host, port)


# ---- verifying what a key promises ----------------------------------------------------------

def verifier_for(key: str, what: str) -> Callable[[Reader], Iterator[bytes]]:
    """A verifier (as _blob_cache takes it) of the object stored under a peer key: it reads the object as
    it is iterated and raises BlobCorruptError at the end unless the content is the one the key names."""
    promise = peer_key(key)
    if promise is None:
        raise DogestryError("internal error: %s is not a content-addressed key" % key)

    def verify(reader: Reader) -> Iterator[bytes]:
        hasher = hashlib.new(promise.algorithm)
        dec = decoder(promise.encoding, what)
        while True:
            chunk = reader.read(PIECE)
            for data in dec.decode(chunk) if chunk else (dec.finish(),):
                hasher.update(data)
            if not chunk:
                break
            yield chunk
        if hasher.hexdigest() != promise.hexdigest:
            raise BlobCorruptError("%s is corrupt: its content hashes to %s:%s"
                                   % (what, promise.algorithm, hasher.hexdigest()))
    return verify


def holds_promise(key: str, data: bytes) -> bool:
    """Whether a whole small object (stored as is) is the one its key names."""
    promise = peer_key(key)
    return promise is not None and promise.encoding == "none" and \
        hashlib.new(promise.algorithm, data).hexdigest() == promise.hexdigest


# ---- transport ------------------------------------------------------------------------------

class PeerFailure(Exception):
    """A peer did not answer usefully: `kind` is refused, timeout, broken or bad_answer."""

    def __init__(self, kind: str, why: str):
        Exception.__init__(self, why)
        self.kind = kind


class _Answer:
    """A peer's answer: status and headers, the body as a reader; its connection goes back to the pool
    once the body was read whole."""

    def __init__(self, transport: "HttpsTransport", peer: str, conn, sock, response, stall: float):
        self._transport, self._peer, self._conn, self._response = transport, peer, conn, response
        self.status = response.status
        sock.settimeout(stall)      # not conn.sock: http.client hands the socket to an answer that closes it

    def header(self, name: str) -> Optional[str]:
        return self._response.getheader(name)

    def read(self, size: int = -1) -> bytes:
        return self._response.read(size if size is not None and size >= 0 else None)

    def close(self) -> None:
        if self._conn is None:
            return
        if self._response.isclosed() and not self._response.will_close:
            self._transport.release(self._peer, self._conn)
        else:
            self._conn.close()
        self._conn = None


class HttpsTransport:
    """HTTPS to peers, with the fleet secret, keep-alive connections, and the timeouts of `settings`."""

    def __init__(self, settings: Settings, ca_file: Optional[str], secret: str):
        self.settings = settings
        self._context = ssl.create_default_context(cafile=ca_file)
        self._auth = "Bearer " + secret
        self.on_handshake: Optional[Callable[[float], None]] = None
        self._idle: Dict[str, List[http.client.HTTPSConnection]] = {}
        self._lock = threading.Lock()

    def _connection(self, peer: str) -> Tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            idle = self._idle.get(peer)
            if idle:
                return idle.pop(), True
        parts = urlsplit(peer)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=self._context,
                                           timeout=self.settings.connect_timeout)
        try:
            started = time.monotonic()
            conn.connect()
            if self.on_handshake is not None:       # a round trip through the peer's process: an answer time
                self.on_handshake(time.monotonic() - started)
        except ssl.SSLError as exc:
            conn.close()
            raise PeerFailure("refused", "TLS with %s failed: %s" % (peer, exc))
        except socket.timeout:
            conn.close()
            raise PeerFailure("timeout", "%s did not accept a connection within %.1f s" % (peer, self.settings.connect_timeout))
        except OSError as exc:
            conn.close()
            raise PeerFailure("refused", "cannot reach %s: %s" % (peer, exc.strerror or exc))
        return conn, False

    def release(self, peer: str, conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(peer, [])
            if len(idle) < POOL:
                idle.append(conn)
                return
        conn.close()

    def request(self, peer: str, method: str, path: str, headers: Dict[str, str],
                answer_timeout: Optional[float] = None) -> _Answer:
        """The answer (its head within `answer_timeout`, default the settings'), or PeerFailure. A kept-alive
        connection the peer closed meanwhile is replaced once, silently."""
        headers = dict(headers, Authorization=self._auth)
        answer_timeout = answer_timeout or self.settings.answer_timeout
        for _attempt in range(2):
            conn, reused = self._connection(peer)
            sock = conn.sock
            try:
                sock.settimeout(answer_timeout)
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
            except socket.timeout:
                conn.close()
                raise PeerFailure("timeout", "%s did not answer within %.2f s" % (peer, answer_timeout))
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:
                    continue
                raise PeerFailure("broken", "%s: %s" % (peer, _one_line(exc) or type(exc).__name__))
            return _Answer(self, peer, conn, sock, response, self.settings.stall_timeout)
        raise PeerFailure("broken", "%s closed every connection" % peer)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def printable(text: str, limit: int = 300) -> str:
    """Request text as a log line may hold it (as _server's): escaped, so that a request cannot forge a line."""
    return text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')


# ---- the client -----------------------------------------------------------------------------

class PeerClient:
    """Reads objects through the fleet's peers, the remote last; one per process."""

    def __init__(self, config: PeerConfig, remote: Remote, metrics=None, transport=None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep, rng=None,
                 cache=None):
        """`cache`: the BlobCache small objects are read through (so that this host's own reads and its
        answers to peers share one fetch, and what peers serve is verified there first)."""
        from ._metrics import Metrics
        self.config, self.remote, self.cache = config, remote, cache
        self.settings = config.settings
        self.metrics = metrics or Metrics()
        self.transport = transport or HttpsTransport(config.settings, config.ca_file, config.secret)
        self.clock, self.sleep = clock, sleep
        self.rng = rng or random.Random()
        self.health = PeerHealth(config.settings, clock)
        self.answer_times = AnswerTimes(config.settings)
        if hasattr(self.transport, "on_handshake"):
            self.transport.on_handshake = self.answer_times.add
        self._reports: "queue.Queue[Tuple[str, str]]" = queue.Queue(1000)
        self._reporter: Optional[threading.Thread] = None

    def fetch(self, key: str) -> Fetch:
        return Fetch(key, self.config.peers, self.config.me, self.health, self.settings, self.clock, self.rng)

    def open(self, key: str, size: Optional[int] = None) -> "PeerReader":
        return PeerReader(self, key, size)

    def get(self, key: str) -> bytes:
        """A whole small object (a manifest, a config), verified against its key: if a peer served wrong
        bytes, it is blamed and the remote read instead."""
        def too_big():
            return BlobCorruptError("%s from peers is over %d MiB: not a metadata object" % (key, MAX_SMALL_OBJECT >> 20))
        if self.cache is not None:
            with self.cache.open(key, lambda: self.open(key), verifier_for(key, "%s on %s" % (key, self.remote.url))) \
                    as reader:
                data = read_bounded(reader, MAX_SMALL_OBJECT, too_big)
                reader.verified()
            return data
        with self.open(key) as reader:
            data = read_bounded(reader, MAX_SMALL_OBJECT, too_big)
            if not reader.untrusted or holds_promise(key, data):
                return data
            reader.blame()
        return self.remote.get(key)     # a few kilobytes: straight from the remote

    def ask(self, step: Step, key: str, size: Optional[int], offset: int) -> Tuple[str, object]:
        """One request for an object: (SERVED, answer to read), (BUSY, (holders, retry_after)), (MISSING, None);
        PeerFailure when the peer fails."""
        headers = {"X-Dogestry-Peer-Mode": step.mode, "X-Dogestry-Peer": self.config.me or ""}
        if size is not None:
            headers["X-Dogestry-Size"] = str(size)
        if offset:
            headers["Range"] = "bytes=%d-" % offset
        asked = self.clock()
        try:
            reply = self.transport.request(step.peer, "GET", PREFIX + key, headers, self.answer_times.timeout())
        except PeerFailure as exc:
            if exc.kind == "timeout":
                self.answer_times.timed_out()
            raise
        self.answer_times.add(self.clock() - asked)
        status = reply.status
        if status in (200, 206):
            length = reply.header("Content-Length")
            expected = None if size is None else size - offset
            ranged = reply.header("Content-Range") or ""
            if (offset and (status != 206 or not ranged.startswith("bytes %d-" % offset))) or \
                    (not offset and status != 200) or \
                    (expected is not None and length is not None and length != str(expected)):
                reply.close()
                raise PeerFailure("bad_answer", "%s answered %d (%s bytes, %s) for %d bytes from byte %d of %s" % (
                    step.peer, status, length, ranged or "whole", expected or -1, offset, key))
            return SERVED, reply
        try:
            body = reply.read(1 << 16)
        except (OSError, http.client.HTTPException):
            body = b""
        reply.close()
        if status == 503:
            try:
                doc = json.loads(body.decode("utf-8"))
                holders = [str(peer) for peer in doc.get("holders", [])][:self.settings.holders_offered]
                retry_after = min(float(doc.get("retry_after", 0.0)), self.settings.max_retry)
            except (ValueError, AttributeError, TypeError):
                holders, retry_after = [], 0.0
            return BUSY, (holders, retry_after)
        if status == 404:
            return MISSING, None
        if status in (401, 403):
            raise PeerFailure("refused", "%s refused our credentials (HTTP %d): is the fleet secret the same?"
                              % (step.peer, status))
        raise PeerFailure("bad_answer", "%s answered HTTP %d" % (step.peer, status))

    def remote_reader(self, key: str, size: Optional[int], offset: int = 0):
        """The remote object from byte `offset`, its bytes counted as the remote's."""
        if not offset:
            reader = self.remote.open(key, size=size)
        elif size is None:
            reader = self.remote.open(key)
            skip = offset
            while skip:
                data = reader.read(min(skip, PIECE))
                if not data:
                    break
                skip -= len(data)
        else:
            reader = _RemoteTail(self.remote, key, offset, size)
        return _Counted(reader, lambda count: self.metrics.blob_bytes("remote", count))

    def failed(self, step: Step, failure: PeerFailure) -> None:
        self.metrics.peer_error(step.peer, failure.kind)
        LOG.warning("peer %s failed (%s): %s; skipped for %.0f s", step.peer, failure.kind, failure,
                    self.settings.failure_memory)

    def stored(self, key: str) -> None:
        """This host now holds `key`, verified: tell its owner (in the background), which names this host
        to askers when it is busy itself."""
        if self.config.me is None or peer_key(key) is None:
            return
        owner = self.fetch(key).owner()
        if owner is None:
            return
        try:
            self._reports.put_nowait((owner, key))
        except queue.Full:
            return          # a hint: losing one costs only a busier owner
        if self._reporter is None:
            self._reporter = threading.Thread(target=self._report, daemon=True, name="dogestry-peer-reports")
            self._reporter.start()

    def _report(self) -> None:
        while True:
            owner, key = self._reports.get()
            try:
                reply = self.transport.request(owner, "POST", PREFIX + "holders/" + key,
                                               {"X-Dogestry-Peer": self.config.me, "Content-Length": "0"})
                reply.read()
                reply.close()
            except PeerFailure as exc:
                LOG.debug("telling %s that this host holds %s: %s", owner, key, exc)

    def warm(self, key: str, size: Optional[int]) -> Optional[str]:
        """Have the owner of `key` fetch it from the remote into its cache (it answers at once). Returns the
        owner asked, or None when no peer is live."""
        for owner in ranked(key, self.config.peers):
            if not self.health.usable(owner):
                continue
            headers = {"X-Dogestry-Peer": self.config.me or "", "Content-Length": "0"}
            if size is not None:
                headers["X-Dogestry-Size"] = str(size)
            try:
                reply = self.transport.request(owner, "POST", PREFIX + "warm/" + key, headers)
                reply.read()
                reply.close()
            except PeerFailure as exc:
                self.failed(Step("peer", owner, "owner"), exc)
                self.health.failed(owner, str(exc))
                continue
            if reply.status in (200, 202):
                return owner
            self.health.failed(owner, "answered HTTP %d to a warm request" % reply.status)
        return None


class _Counted(Reader):
    def __init__(self, reader, count: Callable[[int], None]):
        self._reader, self._count = reader, count

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        self._count(len(data))
        return data

    def close(self) -> None:
        self._reader.close()


class _RemoteTail(Reader):
    """Bytes `start`.. of a remote object of `size` bytes, by ranged reads: how a body that broke off at a
    peer goes on from the remote without reading its first bytes again."""

    def __init__(self, remote: Remote, key: str, start: int, size: int):
        self._remote, self._key, self._next, self._size = remote, key, start, size
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        if not self._pending and self._next < self._size:
            end = min(self._next + RANGE_PIECE, self._size) - 1
            self._pending = self._remote.get_range(self._key, self._next, end)
            self._next = end + 1
        count = len(self._pending) if size is None or size < 0 else size
        data, self._pending = self._pending[:count], self._pending[count:]
        return data

    def close(self) -> None:
        self._pending = b""


class PeerReader(Reader):
    """One object from the fleet: the owner, the holders it names, the next owners, the remote last. A body
    that breaks off goes on from the byte it reached at the next source. `untrusted` when its first
    source is a peer: then the caller must verify the whole before anyone sees it (a BlobCache does),
    and call blame() and read fallback() instead if it is not the object."""

    def __init__(self, client: PeerClient, key: str, size: Optional[int]):
        self._client, self._key, self._size = client, key, size
        self._fetch = client.fetch(key)
        self._offset = 0
        self._body = None
        self._step: Optional[Step] = None
        self._open_next()
        self.untrusted = self._step.source == "peer"

    @property
    def source(self) -> str:
        return self._step.source if self._step else ""

    def _open_next(self) -> None:
        client, fetch = self._client, self._fetch
        while True:
            step = fetch.next()
            for peer in fetch.skipped:
                client.metrics.peer_skipped(peer)
            fetch.skipped = []
            if step.source == "wait":
                client.sleep(step.seconds)
                continue
            if step.source == "remote":
                if fetch.used or fetch.failures:
                    LOG.info("%s from the remote from byte %d: %s", self._key, self._offset, fetch.why_remote)
                self._step, self._body = step, client.remote_reader(self._key, self._size, self._offset)
                return
            try:
                outcome, detail = client.ask(step, self._key, self._size, self._offset)
            except PeerFailure as exc:
                client.failed(step, exc)
                fetch.answered(step, FAILED, why=str(exc))
                continue
            fetch.answered(step, outcome, *(detail if outcome == BUSY else ()))
            if outcome == BUSY:
                client.metrics.peer_busy()
            elif outcome == SERVED:
                self._step, self._body = step, detail
                return

    def read(self, size: int = -1) -> bytes:
        count = PIECE if size is None or size < 0 else size
        while True:
            if self._body is None:
                self._open_next()
            if self._step.source != "peer":
                data = self._body.read(count)
                self._offset += len(data)
                return data
            try:
                data = self._body.read(count)
                if not data and self._size is not None and self._offset < self._size:
                    raise PeerFailure("broken", "%s ended %s at byte %d of %d"
                                      % (self._step.peer, self._key, self._offset, self._size))
            except (OSError, http.client.HTTPException, PeerFailure) as exc:
                failure = exc if isinstance(exc, PeerFailure) else PeerFailure(
                    "timeout" if isinstance(exc, socket.timeout) else "broken",
                    "%s broke off %s at byte %d: %s" % (self._step.peer, self._key, self._offset,
                                                        _one_line(exc) or type(exc).__name__))
                self._client.failed(self._step, failure)
                self._fetch.answered(self._step, FAILED, why=str(failure))
                self._body.close()
                self._body = None
                continue
            self._offset += len(data)
            self._client.metrics.blob_bytes("peer", len(data))
            return data

    def blame(self) -> None:
        """The bytes read were not the object: the peers that served them are skipped for a long while."""
        for peer in self._fetch.corrupt():
            self._client.metrics.peer_error(peer, "corrupt")
            LOG.warning("peer %s served %s with wrong content: it is skipped for %.0f s, and the object read again "
                        "from the next source", peer, self._key, self._client.settings.liar_memory)

    def fallback(self) -> "PeerReader":
        """The object again from its first byte, from the next source this fetch allows (the liars skipped:
        the next owner, or the remote past max_failures)."""
        reader = PeerReader.__new__(PeerReader)
        reader._client, reader._key, reader._size, reader._fetch = self._client, self._key, self._size, self._fetch
        reader._offset, reader._body, reader._step = 0, None, None
        reader._open_next()
        reader.untrusted = reader._step.source == "peer"
        return reader

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class PeerRemote(Remote):
    """A remote with the fleet's peers in front of it for content-addressed reads (PEER_KEY): everything
    else (tags, the version object, listings, ranges, writes) goes to the remote itself.

    `cache`: a BlobCache that verifies what peers serve before anyone reads it (`dogestry pull`, the
    modules: a spool of the pull's own). None for the accelerator, whose registry API reads every blob
    through its own cache (which does the same), so that the two never wrap each other."""

    def __init__(self, remote: Remote, client: PeerClient, cache=None):
        self.remote, self.client, self.cache = remote, client, cache
        self.url = remote.url
        self.read_only = remote.read_only

    def open(self, key, size=None):
        if peer_key(key) is None:
            return self.remote.open(key, size)
        if self.cache is None:
            return self.client.open(key, size)
        return self.cache.open(key, lambda: self.client.open(key, size),
                               verifier_for(key, "%s on %s (through peers)" % (key, self.url)))

    def get(self, key):
        if peer_key(key) is None:
            return self.remote.get(key)
        return self.client.get(key)

    def get_range(self, key, start, end):
        return self.remote.get_range(key, start, end)

    def stat(self, keys):
        return self.remote.stat(keys)

    def list(self, prefix):
        return self.remote.list(prefix)

    def put(self, key, data, overwrite=False):
        return self.remote.put(key, data, overwrite)

    def put_file(self, key, path):
        return self.remote.put_file(key, path)

    def delete(self, key):
        self.remote.delete(key)

    def delete_many(self, keys):
        self.remote.delete_many(keys)

    def move(self, key, new_key):
        self.remote.move(key, new_key)

    def staging_dir(self):
        return self.remote.staging_dir()

    def __getattr__(self, name):
        return getattr(self.remote, name)     # what a remote adds to the interface (a ticket's image name)


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


def pulling_through_peers(remote: Remote, peers_file: str, spool_dir: str, metrics=None) -> PeerRemote:
    """The remote of a pull that is no peer itself (`dogestry pull`, dogestry_pull): content-addressed objects
    come through the fleet's peers into `spool_dir` (the pull's own, removed by the caller), verified there
    before the engine reads a byte."""
    from ._blob_cache import BlobCache
    config = PeerConfig.from_file(peers_file, as_peer=False)
    cache = BlobCache(spool_dir, 1 << 62)
    return PeerRemote(remote, PeerClient(config, remote, metrics, cache=cache), cache)
