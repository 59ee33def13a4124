# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Reading through peers: the client, a reader that switches source mid-object, and PeerRemote, a remote
that reads content-addressed objects from the fleet before the remote.

May import _errors, _format, _codecs, _storage, _metrics and the rest of _peers.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import socket
import threading
import time
from typing import Callable, Optional, Tuple

from .._errors import BlobCorruptError
from .._format.content_keys import peer_key
from .._storage.base import MAX_SMALL_OBJECT, Reader, Remote, read_bounded
from .config import LOG, PIECE, PREFIX, PeerConfig, PeerFailure, RANGE_PIECE, holds_promise, verifier_for
from .policy import AnswerTimes, BUSY, FAILED, Fetch, MISSING, PeerHealth, SERVED, Step, ranked
from .transport import HttpsTransport, _one_line


# ---- the client -----------------------------------------------------------------------------

class PeerClient:
    """Reads objects through the fleet's peers, the remote last; one per process."""

    def __init__(self, config: PeerConfig, remote: Remote, metrics=None, transport=None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep, rng=None,
                 cache=None):
        """`cache`: the BlobCache small objects are read through (so that this host's own reads and its
        answers to peers share one fetch, and what peers serve is verified there first)."""
        from .._metrics import Metrics
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


def pulling_through_peers(remote: Remote, peers_file: str, spool_dir: str, metrics=None) -> PeerRemote:
    """The remote of a pull that is no peer itself (`dogestry pull`, dogestry_pull): content-addressed objects
    come through the fleet's peers into `spool_dir` (the pull's own, removed by the caller), verified there
    before the engine reads a byte."""
    from .._storage.blob_cache import BlobCache
    config = PeerConfig.from_file(peers_file, as_peer=False)
    cache = BlobCache(spool_dir, 1 << 62)
    return PeerRemote(remote, PeerClient(config, remote, metrics, cache=cache), cache)
