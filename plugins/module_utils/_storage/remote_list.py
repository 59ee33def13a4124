# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Several copies of one remote (a primary bucket, a replica in another region, an HTTP mirror): reads
from the first that answers, writes to the primary.

Every byte read is verified by its readers as always, so a copy need not be trusted more than the
primary. A copy that failed is tried last for a while (FAILURE_MEMORY), so a dead primary costs its
timeout once, not on every read. What a copy says about a key decides for tags and the version
object (the first copy that answers is the authority: "no such tag" there is the answer); a
content-addressed object it lacks is looked for in the next copies, which may hold it (a replica
that lags, a mirror that is ahead).

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional

from .._errors import BlobCorruptError, RemoteError, RemoteMissingError, RemoteNotFoundError, RemoteUnsupportedError
from .._format.content_keys import peer_key
from .base import Reader, Remote

FAILURE_MEMORY = 30.0   # seconds a copy that failed is tried only after the others


class RemoteList(Remote):
    def __init__(self, remotes: List[Remote], clock: Callable[[], float] = time.monotonic):
        if not remotes:
            raise RemoteUnsupportedError("a remote list needs at least one remote")
        self.remotes, self.primary = list(remotes), remotes[0]
        self.url = self.primary.url
        self.read_only = self.primary.read_only
        self.clock = clock
        self._failed_until = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "%s (then %s)" % (self.primary.url, ", ".join(remote.url for remote in self.remotes[1:]))

    def _order(self) -> List[Remote]:
        now = self.clock()
        with self._lock:
            healthy = [r for r in self.remotes if self._failed_until.get(id(r), 0.0) <= now]
        return healthy + [r for r in self.remotes if r not in healthy]

    def _failed(self, remote: Remote) -> None:
        with self._lock:
            self._failed_until[id(remote)] = self.clock() + FAILURE_MEMORY

    def _answered(self, remote: Remote) -> None:
        with self._lock:
            self._failed_until.pop(id(remote), None)

    def _read(self, key: Optional[str], call, skip: Optional[Remote] = None):
        """call(remote) on the first copy that answers. A copy that lacks a content-addressed `key` is
        passed over too; for any other key its "not found" is the answer."""
        errors = []
        for remote in self._order():
            if remote is skip:
                continue
            try:
                result = call(remote)
            except RemoteMissingError as exc:     # the copy itself is missing (its bucket): a failed copy
                errors.append(exc)
                self._failed(remote)
                continue
            except RemoteNotFoundError as exc:
                self._answered(remote)
                if key is not None and peer_key(key) is not None:
                    errors.append(exc)          # a content-addressed object may be in another copy
                    continue
                raise
            except BlobCorruptError:
                raise
            except RemoteError as exc:
                errors.append(exc)
                self._failed(remote)
                continue
            self._answered(remote)
            return result
        if not errors:
            raise RemoteError("no other copy of %s to read" % self.url)
        if all(isinstance(error, RemoteNotFoundError) for error in errors):
            raise errors[0]
        raise RemoteError("every copy of the remote failed: %s" % "; ".join(str(error) for error in errors))

    def get(self, key):
        return self._read(key, lambda remote: remote.get(key))

    def open(self, key, size=None):
        return _FirstByte(self, key, size)

    def get_range(self, key, start, end):
        return self._read(key, lambda remote: remote.get_range(key, start, end))

    def stat(self, keys):
        keys = list(keys)
        return self._read(None, lambda remote: remote.stat(keys))

    def list(self, prefix):
        return iter(self._read(None, lambda remote: list(remote.list(prefix))))

    def put(self, key, data, overwrite=False):
        return self.primary.put(key, data, overwrite)

    def put_file(self, key, path):
        return self.primary.put_file(key, path)

    def delete(self, key):
        self.primary.delete(key)

    def delete_many(self, keys):
        self.primary.delete_many(keys)

    def move(self, key, new_key):
        self.primary.move(key, new_key)

    def staging_dir(self):
        return self.primary.staging_dir()

    def __getattr__(self, name):
        return getattr(self.primary, name)


class _FirstByte(Reader):
    """A reader from the first copy that answers. Some remotes open lazily (S3's ranged reads start in
    the background), so a copy that fails before its first byte is passed over here too; once bytes
    have come, the copy's own retries and resumption carry the rest."""

    def __init__(self, remotes: RemoteList, key: str, size: Optional[int]):
        self._remotes, self._key, self._size = remotes, key, size
        self._from: Optional[Remote] = None
        self._reader = self._open()
        self._started = False

    def _open(self, skip: Optional[Remote] = None):
        def opened(remote):
            reader = remote.open(self._key, self._size)
            self._from = remote
            return reader
        return self._remotes._read(self._key, opened, skip)

    def read(self, size: int = -1) -> bytes:
        if self._started:
            return self._reader.read(size)
        try:
            data = self._reader.read(size)
        except BlobCorruptError:
            raise
        except RemoteError:
            if len(self._remotes.remotes) < 2:
                raise
            self._reader.close()
            self._remotes._failed(self._from)
            self._reader = self._open(skip=self._from)
            data = self._reader.read(size)
        self._started = True
        return data

    def close(self) -> None:
        self._reader.close()
