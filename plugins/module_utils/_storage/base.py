# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The one small interface every remote implements (the directory remote is local.py).

A remote is a dumb key/value object store. Keys are '/'-separated relative paths (see _format).
The engine never writes anything but a tag twice, so remotes only need create-only writes
for everything else; eventual consistency of listings is tolerated because nothing is found
through a listing that a tag has not already made reachable.

May import _errors only.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional

from .._errors import BlobCorruptError, FormatError


MAX_SMALL_OBJECT = 64 << 20     # image configs are kilobytes; manifests and tags smaller still


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float     # seconds since the epoch


class Remote:
    """Interface. `url` is for messages; it never contains secrets."""

    url = ""
    read_only = False

    def get(self, key: str) -> bytes:
        """A whole small object (tag, manifest, config); RemoteNotFoundError if absent.

        Bounded by MAX_SMALL_OBJECT, so a hostile remote cannot make a reader hold gigabytes.
        """
        with self.open(key) as body:
            return read_bounded(body, MAX_SMALL_OBJECT, lambda: FormatError(
                "%s on %s is over %d MiB: not a dogestry metadata object" % (key, self.url, MAX_SMALL_OBJECT >> 20)))

    def open(self, key: str, size: Optional[int] = None) -> BinaryIO:
        """A streaming reader (a context manager); RemoteNotFoundError if absent.

        `size`, when the caller knows it, lets a remote fetch parts in parallel (S3: ranged GETs);
        a remote that reads fewer or more bytes than that raises BlobCorruptError.
        """
        raise NotImplementedError

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes start..end (inclusive) of `key`; BlobCorruptError when the object is shorter.

        A fallback that streams past `start`; remotes that can seek or send ranges override it.
        """
        with self.open(key) as body:
            skip = start
            while skip:
                chunk = body.read(min(skip, 1 << 20))
                if not chunk:
                    break
                skip -= len(chunk)
            data = body.read(end - start + 1) if not skip else b""
        return _whole_range(key, self.url, data, start, end)

    def stat(self, keys: Iterable[str]) -> Dict[str, ObjectInfo]:
        """The subset of `keys` that exist, with their sizes (one listing or one HEAD each, remote's choice)."""
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`."""
        raise NotImplementedError

    def put(self, key: str, data: bytes, overwrite: bool = False) -> bool:
        """Store `data`. Without overwrite the write is create-only: returns False if the key existed."""
        raise NotImplementedError

    def put_file(self, key: str, path: str) -> bool:
        """Create-only store of a finished local file, which the remote takes over (moves or deletes)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_many(self, keys: List[str]) -> None:
        """Delete several keys (absent ones are no error); remotes with a batch call (S3) override it."""
        for key in keys:
            self.delete(key)

    def move(self, key: str, new_key: str) -> None:
        """Move an object aside (verify's repair quarantines damaged objects this way)."""
        raise NotImplementedError

    def staging_dir(self) -> Optional[str]:
        """Where new blobs should be spooled so that put_file() is cheap (None: the system temp dir)."""
        return None


def _whole_range(key: str, url: str, data: bytes, start: int, end: int) -> bytes:
    if len(data) != end - start + 1:
        raise BlobCorruptError("%s on %s is shorter than its manifest says (%d bytes from %d, expected %d)"
                               % (key, url, len(data), start, end - start + 1))
    return data


def read_bounded(body, limit: int, too_big: Callable[[], Exception]) -> bytes:
    """All of a reader's bytes, raising too_big() as soon as they pass `limit` (nothing more is held)."""
    chunks, total = [], 0
    while True:
        chunk = body.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise too_big()
        chunks.append(chunk)


class Reader:
    """Base of the streaming readers: `with` closes them (subclasses define read and close)."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def unlink_quietly(path: str) -> None:
    """Remove a local spool or temporary file if it is there; a failure only leaves it behind."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_dir_for(remote: Remote) -> str:
    """A private spool directory for one operation, on the remote's filesystem when it has one."""
    return tempfile.mkdtemp(prefix="dogestry-", dir=remote.staging_dir())
