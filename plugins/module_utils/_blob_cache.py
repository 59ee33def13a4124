# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The accelerator's local blob cache: stored objects (as on the remote, lz4 and all), LRU, size-bound.

One request fetches a blob from the remote while it streams it to its client (a tee into a temp
file); concurrent requests for the same blob wait for that fetch instead of starting their own.
The temp file becomes a cache entry only when the caller commits it, which the registry API does
after the decoded bytes were verified, so nothing unverified is ever cached. Readers decode and
verify cached entries again as they serve them, and drop an entry that fails.
"""

from __future__ import annotations

import collections
import os
import threading
import uuid
from typing import Callable, Optional

from ._remote import Reader

WAIT_SECONDS = 600      # a follower waits this long for a leader's fetch before fetching itself


class _Tee(Reader):
    """Reads the remote object, writing what it reads into the cache's temp file."""

    def __init__(self, cache: "BlobCache", key: str, reader, tmp: str):
        self._cache, self._key, self._reader, self._tmp = cache, key, reader, tmp
        self._out = open(tmp, "wb")
        self._size = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if data:
            self._out.write(data)
            self._size += len(data)
        return data

    def commit(self) -> None:
        """The bytes read were verified: keep them."""
        self._out.close()
        self._done = True
        self._cache._commit(self._key, self._tmp, self._size)

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            if not self._out.closed:
                self._out.close()
            if not self._done:
                self._cache._abandon(self._key, self._tmp)


class _Cached(Reader):
    """A cache entry being served; commit() is a no-op, discard() drops a bad entry."""

    def __init__(self, cache: "BlobCache", key: str, handle):
        self._cache, self._key, self._handle = cache, key, handle

    def read(self, size: int = -1) -> bytes:
        return self._handle.read(size)

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        self._cache.discard(self._key)

    def close(self) -> None:
        self._handle.close()


class BlobCache:
    def __init__(self, root: str, max_bytes: int, on_hit: Callable[[], None] = lambda: None,
                 on_miss: Callable[[], None] = lambda: None):
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        self._on_hit, self._on_miss = on_hit, on_miss
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

    def open(self, key: str, fetch: Callable[[], object]):
        """A reader of `key`: from the cache, or from `fetch()` (the remote) teed into the cache.

        Callers call `.commit()` once the bytes read were verified, and `.close()` always."""
        name = self._name(key)
        while True:
            with self._lock:
                if name in self._entries:
                    self._entries.move_to_end(name)
                    try:
                        handle = open(self._path(name), "rb")
                    except FileNotFoundError:
                        self._forget(name)
                        continue
                    self._on_hit()
                    return _Cached(self, key, handle)
                event = self._inflight.get(name)
                if event is None:
                    self._inflight[name] = threading.Event()
                    break
            event.wait(WAIT_SECONDS)
            with self._lock:
                if self._inflight.get(name) is event and not event.is_set():
                    self._inflight.pop(name)    # the leader is stuck: fetch it ourselves
        self._on_miss()
        try:
            reader = fetch()
        except BaseException:
            self._abandon(key, None)
            raise
        return _Tee(self, key, reader, self._path("%s.%s.tmp" % (name, uuid.uuid4().hex)))

    def _commit(self, key: str, tmp: str, size: int) -> None:
        name = self._name(key)
        with self._lock:
            if size > self.max_bytes:
                os.unlink(tmp)
            else:
                os.replace(tmp, self._path(name))
                if name in self._entries:
                    self.size -= self._entries[name]
                self._entries[name] = size
                self.size += size
                self._evict()
            self._release(name)

    def _abandon(self, key: str, tmp: Optional[str]) -> None:
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        with self._lock:
            self._release(self._name(key))

    def _release(self, name: str) -> None:
        event = self._inflight.pop(name, None)
        if event is not None:
            event.set()

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

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._name(key) in self._entries
