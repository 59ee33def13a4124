# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The accelerator's local blob cache: stored objects (as on the remote, lz4 and all), LRU, size-bound.

A blob that is not cached yet is fetched once, by a thread of its own, into a temp file at the
remote's pace; every client that asks for it meanwhile (the first one too) reads that file as it
grows, each at its own pace, so a slow client holds back nobody (distribution's proxy blob store
has the same concern). The fetch checks what it reads (the caller's `verifier`) and only then
renames the temp file into the cache: nothing unverified is ever cached, and the clients following
the fetch need not hash those bytes again. Readers of an entry decode and verify it as they serve
it, and drop an entry that fails. A cache that cannot keep up (a full or failing disk, too many
fetches at once) degrades to reading the remote directly, still checked: a download never fails
because of the cache.

A fetch whose reader is `untrusted` (bytes from fleet peers, _peers) is hidden: its readers see no
byte of it until the whole object is verified. If it is not the object, the reader blames the peers
that served it and gives a reader of it from the next source (`fallback()`: other peers, the remote
last), whose bytes replace them; the readers never notice. Entries that land are announced (`on_stored`), so this host can serve them
to peers.

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import uuid
from typing import Callable, Iterator, Optional

from .._errors import BlobCorruptError, DogestryError
from .base import Reader

MAX_FETCHES = 64        # blobs fetched into the cache at once; more are served straight from the remote
READ_STEP = 1 << 20     # what a reader of a cache file reads at once when asked for "everything"
LOG = logging.getLogger("dogestry.serve")


class _CacheWriteError(Exception):
    """The cache's disk failed a write: the fetch stops, and its readers go on from the remote."""


class _Fetch:
    """One fetch of a blob into a temp file: how much is written, and how it ended."""

    def __init__(self, tmp: str, fd: int, key: str):
        self.tmp, self.fd, self.key = tmp, fd, key
        self.changed = threading.Condition()
        self.written = 0
        self.hidden = False     # bytes from untrusted peers: readers see them only once all are verified
        self.done = False
        self.error: Optional[BaseException] = None     # when done: None, or why the fetch failed

    def rewind(self) -> None:
        """Drop what was written (nobody has read it: the fetch is hidden), to write the object afresh."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        with self.changed:
            self.written = 0


class _Tee(Reader):
    """The remote object as the fetch's verifier reads it, appended to the temp file as it goes."""

    def __init__(self, reader, fetch: _Fetch):
        self._reader, self._fetch = reader, fetch

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fetch.fd, view):]
        except OSError as exc:
            raise _CacheWriteError(exc)
        with self._fetch.changed:
            self._fetch.written += len(data)
            self._fetch.changed.notify_all()
        return data


class _Follower(Reader):
    """A client's reader of a fetch in flight: the temp file up to what is written, waiting for more.

    If the fetch fails for any reason but corrupt content, this reader goes on by itself from the
    remote (_Checked): the client is served uncached, and its bytes are still checked."""

    verified_reads = True       # verified() raises unless every byte read here was the blob's
    source = "cache"            # a client following another's fetch reads the cache's file; the fetch's leader: "remote"

    def __init__(self, cache: "BlobCache", key: str, flight: _Fetch, fetch: Callable[[], object], verifier):
        self._cache, self._key, self._flight, self._fetch, self._verifier = cache, key, flight, fetch, verifier
        self._fd = os.open(flight.tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._offset = 0
        self._direct: Optional[_Checked] = None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_STEP), b""))
        if self._direct is not None:
            return self._direct.read(size)
        flight = self._flight
        with flight.changed:
            while (flight.hidden or flight.written <= self._offset) and not flight.done:
                flight.changed.wait()
            visible = 0 if flight.hidden and flight.error is not None else flight.written    # never unverified peer bytes
            available, error = visible - self._offset, flight.error
        if available > 0:
            data = os.pread(self._fd, min(size, available), self._offset)
            self._offset += len(data)
            return data
        if error is None:
            return b""
        if isinstance(error, BlobCorruptError):
            raise error
        self._direct = _Checked(self._fetch(), self._verifier, self._offset)
        return self._direct.read(size)

    def verified(self) -> None:
        """Wait until the bytes read are known to be the blob's; BlobCorruptError if they were not."""
        if self._direct is not None:
            self._direct.verified()
            return
        with self._flight.changed:
            while not self._flight.done:
                self._flight.changed.wait()
        if isinstance(self._flight.error, BlobCorruptError):
            raise self._flight.error
        if self._flight.error is not None:      # the fetch broke after this reader's last byte: check on our own
            self._direct = _Checked(self._fetch(), self._verifier, self._offset)
            self._direct.verified()

    def discard(self) -> None:
        self._cache.discard(self._key)

    def close(self) -> None:
        os.close(self._fd)
        if self._direct is not None:
            self._direct.close()


class _Checked(Reader):
    """The remote object read afresh, checked as it is read (the verifier stepped along with the
    reads), its first `skip` bytes dropped: how a follower goes on when the fetch it followed failed."""

    def __init__(self, reader, verifier, skip: int):
        self._reader, self._skip = reader, skip
        self._pending: "collections.deque[bytes]" = collections.deque()    # read, not handed out yet
        self._steps = verifier(_Tap(reader, self._pending)) if verifier is not None else None
        self._ended = False

    def _pull(self) -> None:
        while not self._pending and not self._ended:
            if self._steps is None:
                data = self._reader.read(READ_STEP)
                self._pending.extend([data] if data else [])
                self._ended = not data
            else:
                self._ended = next(self._steps, self) is self     # the verifier raises at the end if corrupt

    def read(self, size: int = -1) -> bytes:
        while True:
            self._pull()
            if not self._pending:
                return b""
            data = self._pending.popleft()
            if self._skip:
                dropped = min(self._skip, len(data))
                self._skip -= dropped
                data = data[dropped:]
            if size is not None and 0 <= size < len(data):
                self._pending.appendleft(data[size:])
                data = data[:size]
            if data:
                return data

    def verified(self) -> None:
        while not self._ended:
            self._pending.clear()
            self._pull()

    def close(self) -> None:
        self._reader.close()


class _Tap(Reader):
    """Hands on what it reads (for _Checked)."""

    def __init__(self, reader, sink):
        self._reader, self._sink = reader, sink

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if data:
            self._sink.append(data)
        return data

    def close(self) -> None:
        self._reader.close()


def skipped(reader, count: int):
    """`reader`, its first `count` bytes read and dropped."""
    while count:
        data = reader.read(min(count, READ_STEP))
        if not data:
            break
        count -= len(data)
    return reader


class _Cached(Reader):
    """A cache entry being served (verified when it was cached); discard() drops a bad entry."""

    verified_reads = False      # the caller checks what it reads: a cached file may have rotted
    source = "cache"

    def __init__(self, cache: "BlobCache", key: str, handle):
        self._cache, self._key, self._handle = cache, key, handle

    @property
    def size(self) -> int:
        return os.fstat(self._handle.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._cache.on_bytes("cache", len(data))
        return data

    def seek(self, offset: int) -> None:
        self._handle.seek(offset)

    def verified(self) -> None:
        pass

    def discard(self) -> None:
        self._cache.discard(self._key)

    def close(self) -> None:
        self._handle.close()


class Uncached(Reader):
    """A remote reader served without the cache: nothing to wait for, nothing to drop."""

    verified_reads = False
    source = "remote"

    def __init__(self, reader):
        self._reader = reader

    def read(self, size: int = -1) -> bytes:
        return self._reader.read(size)

    def verified(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self) -> None:
        self._reader.close()


class BlobCache:
    def __init__(self, root: str, max_bytes: int, on_hit: Callable[[], None] = lambda: None,
                 on_miss: Callable[[], None] = lambda: None, max_fetches: int = MAX_FETCHES,
                 on_evict: Callable[[], None] = lambda: None,
                 on_bytes: Callable[[str, int], None] = lambda source, count: None,
                 on_stored: Callable[[str], None] = lambda key: None):
        """`on_bytes("cache", n)`: bytes read from entries; `on_stored(key)`: an object became an entry."""
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self.max_fetches = max_fetches
        self._on_hit, self._on_miss, self._on_evict = on_hit, on_miss, on_evict
        self.on_bytes, self.on_stored = on_bytes, on_stored
        self._lock = threading.Lock()
        self._entries: "collections.OrderedDict[str, int]" = collections.OrderedDict()   # least recent first
        self._inflight = {}
        self.size = 0
        os.makedirs(self.root, exist_ok=True)
        found = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)           # a fetch a crash interrupted
            elif entry.is_file():
                stat = entry.stat()
                found.append((stat.st_atime, entry.name, stat.st_size))
        for _atime, name, size in sorted(found):
            self._entries[name] = size
            self.size += size
        with self._lock:
            self._evict()

    @staticmethod
    def _name(key: str) -> str:
        # Remote keys are content addresses (blobs/sha256/ab/<hex>[.lz4]): the last part is unique.
        return key.rsplit("/", 1)[-1]

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def open_cached(self, key: str) -> Optional[_Cached]:
        """The entry of `key` (a hit), or None when it is not cached."""
        name = self._name(key)
        with self._lock:
            if name not in self._entries:
                return None
            self._entries.move_to_end(name)
            try:
                handle = open(self._path(name), "rb")
            except OSError:
                self._forget(name)
                return None
        self._on_hit()
        return _Cached(self, key, handle)

    def open(self, key: str, fetch: Callable[[], object], verifier: Optional[Callable[[Reader], Iterator]] = None):
        """A reader of `key`: the cache entry, or a fetch into the cache (started now or in flight).

        `fetch()` opens the remote object (called here by the first client, so that a missing blob
        raises to it); `verifier(reader)` iterates over a fetched object, reading it as it goes, and
        raises BlobCorruptError at the end if it is not the blob (None: nothing is checked here, the
        caller verifies every read itself). Readers have `discard()` and `verified()`; where
        `verified_reads` is true, verified() waits until every byte read is known to be the blob's
        (raising BlobCorruptError otherwise), so the caller need not hash them again. Close them always."""
        cached = self.open_cached(key)
        if cached is not None:
            return cached
        name = self._name(key)
        with self._lock:
            flight = self._inflight.get(name)
            leader = flight is None and len(self._inflight) < self.max_fetches
            if leader:
                tmp = self._path("%s.%s.tmp" % (name, uuid.uuid4().hex))
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                except OSError as exc:
                    LOG.warning("cache %s: cannot write (%s): serving %s uncached", self.root, exc.strerror or exc, name)
                    leader = False
                else:
                    flight = self._inflight[name] = _Fetch(tmp, fd, key)
            follower = None
            if flight is not None:
                try:
                    follower = _Follower(self, key, flight, fetch, verifier)
                except OSError as exc:
                    LOG.warning("cache %s: cannot read (%s): serving %s uncached", self.root, exc.strerror or exc, name)
        if leader and follower is None:
            self._land(name, flight, OSError("the cache cannot read its own file"))
            leader = False
        if follower is None:                    # no fetch to follow, none to start: straight from the remote
            self._on_miss()
            return Uncached(fetch())
        if not leader:
            self._on_hit()
            return follower
        self._on_miss()
        follower.source = "remote"
        try:
            reader = fetch()
            if getattr(reader, "untrusted", False):
                if verifier is None:
                    reader.close()
                    raise DogestryError("internal error: bytes from peers for %s with nothing to verify them" % key)
                flight.hidden = True
        except BaseException as exc:
            follower.close()
            self._land(name, flight, exc)
            raise
        threading.Thread(target=self._run, args=(name, flight, reader, verifier), daemon=True,
                         name="dogestry-fetch-%s" % name[:12]).start()
        return follower

    def _run(self, name: str, flight: _Fetch, reader, verifier) -> None:
        error = None
        try:
            while True:
                tee = _Tee(reader, flight)
                try:
                    for _checked in verifier(tee) if verifier is not None else iter(lambda: tee.read(READ_STEP), b""):
                        pass
                    break
                except BlobCorruptError:
                    if not flight.hidden or not getattr(reader, "untrusted", False):
                        raise
                    # Peers served wrong bytes, which no reader has seen: blame them, and read it again elsewhere.
                    reader.blame()
                    fallback, untrusted = reader.fallback, reader
                    reader = None
                    untrusted.close()
                    flight.rewind()
                    reader = fallback()
        except BaseException as exc:    # the readers get it (or go on from the remote): nothing is lost here
            error = exc
            if isinstance(exc, _CacheWriteError):
                LOG.warning("cache %s: %s: serving %s uncached", self.root, exc, name)
        finally:
            if reader is not None:
                reader.close()
        self._land(name, flight, error)

    def _land(self, name: str, flight: _Fetch, error: Optional[BaseException]) -> None:
        """End a fetch: a verified object becomes an entry (if it fits), anything else is dropped."""
        os.close(flight.fd)
        with self._lock:
            self._inflight.pop(name, None)
            keep = error is None and flight.written <= self.max_bytes
            try:
                if keep:
                    os.replace(flight.tmp, self._path(name))
                    self.size -= self._entries.pop(name, 0)
                    self._entries[name] = flight.written
                    self.size += flight.written
                    self._evict()
                else:
                    os.unlink(flight.tmp)
            except OSError as exc:
                LOG.warning("cache %s: cannot keep %s: %s", self.root, name, exc.strerror or exc)
        with flight.changed:
            flight.done, flight.error = True, error
            flight.changed.notify_all()
        if keep and name in self:
            self.on_stored(flight.key)

    def hidden(self, key: str) -> bool:
        """Whether `key` is being fetched from peers right now (none of it readable until it is verified)."""
        with self._lock:
            flight = self._inflight.get(self._name(key))
        return flight is not None and flight.hidden and not flight.done

    def discard(self, key: str) -> None:
        with self._lock:
            self._forget(self._name(key))

    def _forget(self, name: str) -> None:
        size = self._entries.pop(name, None)
        if size is not None:
            self.size -= size
            try:
                os.unlink(self._path(name))
            except FileNotFoundError:
                pass

    def _evict(self) -> None:
        # Readers that have an evicted entry open keep reading it: unlink only drops the name.
        while self.size > self.max_bytes and self._entries:
            self._forget(next(iter(self._entries)))
            self._on_evict()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._name(key) in self._entries
