# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Concurrent ranged downloads of one S3 object: parts fetched ahead in parallel, each resumed where
it broke off, handed out in order.

May import _errors, _transfer and _storage.base.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, List
try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # the S3 remote reports boto3's absence; these keep the except clauses valid
    class BotoCoreError(Exception):
        pass

    ClientError = BotoCoreError

from .._errors import BlobCorruptError, DogestryError, RemoteError
from .base import Reader

if TYPE_CHECKING:  # a type only: s3 imports this module
    from .s3 import S3Remote


MiB = 1 << 20
MAX_ATTEMPTS = 6                 # botocore "standard" retries (throttling, 5xx, connection errors): ~30 s at most
FILL_SIZE = 256 << 10            # ranged reads: bytes taken from the socket at a time into a part's buffer


def _backoff(attempt: int) -> float:
    return min(0.1 * 2 ** attempt, 2.0)


class _FileRange(Reader):
    """Bytes offset..offset+length of a file as a seekable body, which botocore reads in pieces (checksum,
    signature, sending) and rewinds to retry: an upload part never sits in memory whole. Part-sized
    allocations in the upload threads would leave freed memory in glibc's per-thread arenas."""

    def __init__(self, path: str, offset: int, length: int):
        self._file = open(path, "rb")
        self._offset, self._length, self._pos = offset, length, 0
        self._file.seek(offset)

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        data = self._file.read(left if size is None or size < 0 or size > left else size)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        self._file.seek(self._offset + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self):
        self._file.close()


class _ResumingReader(Reader):
    """One GET as a stream that survives a connection broken mid-body (botocore's retries end when
    the headers arrive): it resumes with a ranged GET from the byte it stopped at, of the same
    version of the object (If-Match on its ETag), up to MAX_ATTEMPTS times."""

    def __init__(self, remote: "S3Remote", key: str):
        self._remote, self._key = remote, key
        self._offset, self._attempt = 0, 0
        self._body, self._etag, self._size = remote.get_body(key)

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._attempt and self._offset >= self._size:
                return b""      # it broke after the last byte
            try:
                data = self._body.read(size) if size is not None and size >= 0 else self._body.read()
                self._offset += len(data)
                return data
            except (BotoCoreError, OSError) as exc:
                self._attempt += 1
                if self._attempt >= MAX_ATTEMPTS or not self._etag:
                    raise self._remote._error(exc, "reading", self._key)
                self._body.close()
                time.sleep(_backoff(self._attempt))
                self._body = self._remote.get_body(self._key, self._offset, self._etag)[0]

    def close(self):
        self._body.close()


class _Part:
    """One range of an object, downloaded into a buffer of the read-ahead budget while its reader consumes it."""

    __slots__ = ("start", "length", "buffer", "filled", "error", "state", "future")

    def __init__(self, start: int, length: int, buffer):
        self.start, self.length, self.buffer = start, length, buffer
        self.filled = 0             # bytes of the range in the buffer so far
        self.error = None           # the exception that ended its download
        self.state = "queued"       # -> "running" -> "finished"; "released" once its buffer went back
        self.future = None


class _ReadAhead:
    """The memory all ranged readers of one remote may hold, and the threads that fill it.

    Every part a reader asked for holds one buffer of part_size bytes from the moment its GET is
    queued until the reader has consumed its last byte. Parts are granted while the bytes held stay
    within `limit`, to readers in the order they were opened: the layer Docker or `docker load`
    reads now comes first, and the next one gets what is left, so its first parts download while
    the current one drains (read-ahead across layer boundaries). A reader holding no part always
    gets one, so none ever waits for another to progress: bytes held are at most `limit` plus one
    part per open reader. Buffers are anonymous mmaps, reused while any reader is open and unmapped
    when the last one closes; part-sized allocations in many threads used to leave freed memory in
    glibc's per-thread arenas (the accelerator over S3 peaked at 224 MB with 29 MB in use).
    """

    def __init__(self, part_size: int, limit: int):
        self.part_size, self.limit = part_size, max(int(limit), part_size)
        self.lock = threading.Lock()
        self.held = 0               # bytes of the buffers granted now
        self.peak = 0               # most bytes held at once (tests and benchmarks read it)
        self.readers: List["_RangedReader"] = []
        self._spare: List[mmap.mmap] = []
        self._pool = None

    def submit(self, fn, *args):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.limit // self.part_size + 2, thread_name_prefix="dogestry-range")
        return self._pool.submit(fn, *args)

    def grant(self, reader: "_RangedReader") -> bool:
        """Under the lock: may `reader` have one more part now?"""
        return not reader.parts or self.held + self.part_size <= self.limit

    def take(self) -> mmap.mmap:
        """Under the lock: a buffer for one part."""
        self.held += self.part_size
        self.peak = max(self.peak, self.held)
        return self._spare.pop() if self._spare else mmap.mmap(-1, self.part_size, flags=mmap.MAP_PRIVATE)

    def give_back(self, part: _Part) -> None:
        """Under the lock: the part's buffer is free again."""
        part.state = "released"
        self.held -= self.part_size
        self._spare.append(part.buffer)
        part.buffer = None
        if not self.readers:
            self._trim()

    def _trim(self) -> None:
        if self.held == 0:
            for buffer in self._spare:
                buffer.close()
            self._spare = []

    def pump(self) -> None:
        """Under the lock: hand out what the budget allows, oldest reader first."""
        for reader in self.readers:
            reader.fill()

    def opened(self, reader: "_RangedReader") -> None:
        with self.lock:
            self.readers.append(reader)
            self.pump()

    def closed(self, reader: "_RangedReader") -> None:
        """Under the lock."""
        if reader in self.readers:
            self.readers.remove(reader)
        self.pump()
        if not self.readers:
            self._trim()


class _RangedReader(Reader):
    """One object as a file-like stream of ranged GETs, read back in order.

    Parts are granted by the remote's _ReadAhead. Each is streamed
    into its buffer by a worker thread while the consumer reads the bytes that arrived, so the
    first bytes are readable one round trip after opening; a connection that breaks mid-part is
    resumed from the byte it reached (MAX_ATTEMPTS in all). A pull thus streams into `docker load`
    while the rest of the layer, and the first parts of the next, are still downloading.
    """

    def __init__(self, remote: "S3Remote", key: str, size: int):
        self._remote, self._key, self._size = remote, key, size
        self._budget = remote.read_ahead
        self._next = 0                  # first byte not yet asked for
        self.parts = deque()            # granted parts, in order; the first is being consumed
        self._pos = 0                   # bytes of parts[0] consumed
        self._closed = False
        self._awaited, self._awaited_until = None, 0      # the part (and the byte of it) read() waits for
        self._changed = threading.Condition(self._budget.lock)
        self._budget.opened(self)

    def fill(self) -> None:
        """Under the budget's lock: ask for the parts it grants."""
        budget = self._budget
        while not self._closed and self._next < self._size and budget.grant(self):
            length = min(budget.part_size, self._size - self._next)
            part = _Part(self._next, length, budget.take())
            self._next += length
            self.parts.append(part)
            part.future = budget.submit(self._download, part)

    def _download(self, part: _Part) -> None:
        with self._changed:
            if part.state != "queued" or self._closed:
                return
            part.state = "running"
        try:
            self._fetch(part)
        except BaseException as exc:   # noqa: BLE001 - handed to the consumer, who raises it
            part.error = exc if isinstance(exc, DogestryError) else self._remote._error(exc, "reading", self._key)
        finally:
            with self._changed:
                part.state = "finished" if part.state == "running" else part.state
                if self._closed and part.state == "finished":
                    self._budget.give_back(part)
                    self._budget.pump()
                self._changed.notify_all()

    def _fetch(self, part: _Part) -> None:
        remote, end = self._remote, part.start + part.length - 1
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = remote.client.get_object(Bucket=remote.bucket, Key=remote._key(self._key),
                                                    Range="bytes=%d-%d" % (part.start + part.filled, end))
                body = response["Body"]
                try:
                    while part.filled < part.length:
                        data = body.read(min(FILL_SIZE, part.length - part.filled))
                        if not data:
                            break
                        with self._changed:
                            if self._closed:
                                return
                            part.buffer[part.filled:part.filled + len(data)] = data
                            part.filled += len(data)
                            if self._awaited is part and part.filled >= self._awaited_until:
                                self._changed.notify_all()
                finally:
                    body.close()
                if part.filled < part.length:
                    raise BlobCorruptError("%s on %s is shorter than its manifest says (%d bytes from %d, expected %d)"
                                           % (self._key, remote.url, part.filled, part.start, part.length))
                return
            except (BotoCoreError, ClientError, OSError) as exc:
                if remote._code(exc) == "InvalidRange":
                    raise BlobCorruptError("%s on %s is shorter than its manifest says (no byte %d)"
                                           % (self._key, remote.url, part.start + part.filled))
                if isinstance(exc, ClientError) or attempt == MAX_ATTEMPTS:
                    raise remote._error(exc, "reading", self._key)
                time.sleep(_backoff(attempt))

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(MiB), b""))
        with self._changed:
            while True:
                if self._closed:
                    raise RemoteError("reading %s on %s: the reader was closed" % (self._key, self._remote.url))
                if not self.parts:
                    return b""
                part = self.parts[0]
                want = min(size, part.length - self._pos)
                if part.filled - self._pos >= want or part.state == "finished":
                    break
                self._awaited, self._awaited_until = part, self._pos + want     # wake me then, not at every piece
                self._changed.wait()
                self._awaited = None
            if part.filled - self._pos < want:
                raise part.error or RemoteError("reading %s on %s: a part ended early" % (self._key, self._remote.url))
            data = part.buffer[self._pos:self._pos + want]
            self._pos += want
            if self._pos == part.length:
                self.parts.popleft()
                self._pos = 0
                self._budget.give_back(part)
                self._budget.pump()
        return data

    def close(self):
        with self._changed:
            if self._closed:
                return
            self._closed = True
            for part in self.parts:
                if part.state != "running":      # queued (never to run) or finished: free now
                    if part.future is not None:
                        part.future.cancel()
                    self._budget.give_back(part)
                # a running download frees its buffer when it stops, at its next piece
            self.parts.clear()
            self._budget.closed(self)
            self._changed.notify_all()
