# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The one small interface every remote implements, and the local-directory remote.

A remote is a dumb key/value object store. Keys are '/'-separated relative paths (see _format).
The engine never writes anything but a tag twice, so remotes only need create-only writes
for everything else; eventual consistency of listings is tolerated because nothing is found
through a listing that a tag has not already made reachable.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as stat_module
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional

from ._errors import BlobCorruptError, FormatError, RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError

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


class LocalRemote(Remote):
    """A directory on this host (or a mounted NFS/CIFS share)."""

    STAGING = ".staging"

    def __init__(self, root: str):
        if "\0" in root:
            raise RemoteUnsupportedError("remote directory %r contains a NUL byte" % root)
        self.root = os.path.abspath(root)
        self.url = self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _fail(self, exc: OSError, what: str, key: str) -> RemoteError:
        where = "%s (%s)" % (self._path(key), what)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return RemoteAuthError("permission denied %s" % where)
        if exc.errno == errno.ENOENT:
            return RemoteNotFoundError("not found: %s" % where)
        if exc.errno == errno.ENOSPC:
            return RemoteError("no space left on device %s" % where)
        if exc.errno == errno.ELOOP:
            return RemoteError("%s is a symlink: a directory remote holds only regular files; remove it" % where)
        return RemoteError("%s failed: %s" % (where, exc.strerror or exc))

    def _inside(self, key: str) -> str:
        """The path of `key`, refused when a directory on the way is a symlink.

        A symlinked directory could send writes (or reads) anywhere on the host; the remote root
        itself may be a symlink (a mount point elsewhere), nothing below it may.
        """
        path = self._path(key)
        parent = os.path.dirname(path)
        expected = os.path.join(os.path.realpath(self.root), *key.split("/")[:-1])
        if os.path.realpath(parent) != expected:
            raise RemoteError("%s is reached through a symlinked directory (%s): a directory remote holds no "
                              "symlinks; remove it" % (path, os.path.realpath(parent)))
        return path

    def open(self, key, size=None):
        path = self._inside(key)
        try:
            # Non-blocking, so a FIFO planted in the remote cannot hang us; no symlinks; then only a
            # regular file is read (a directory or device is refused with one line).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._fail(exc, "reading", key)
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            os.close(fd)
            raise RemoteError("%s is not a regular file (%s): a directory remote holds only regular files; remove it"
                              % (path, _file_kind(info.st_mode)))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")

    def get_range(self, key, start, end):
        with self.open(key) as body:
            try:
                body.seek(start)
                data = body.read(end - start + 1)
            except OSError as exc:
                raise self._fail(exc, "reading", key)
        return _whole_range(key, self.url, data, start, end)

    def stat(self, keys):
        """Only regular files exist for a directory remote (a FIFO or symlink counts as absent)."""
        found = {}
        for key in keys:
            try:
                info = os.lstat(self._path(key))
            except (OSError, ValueError):
                continue
            if stat_module.S_ISREG(info.st_mode):
                found[key] = ObjectInfo(key, info.st_size, info.st_mtime)
        return found

    def list(self, prefix):
        # Walk only the deepest directory the prefix names completely.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._path(base) if base else self.root
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            if rel.startswith(self.STAGING):
                dirnames[:] = []
                continue
            for filename in filenames:
                key = rel + filename
                if key.startswith(prefix):
                    try:
                        info = os.lstat(os.path.join(dirpath, filename))
                    except FileNotFoundError:
                        continue
                    if stat_module.S_ISREG(info.st_mode):
                        yield ObjectInfo(key, info.st_size, info.st_mtime)

    def _tempfile(self) -> str:
        staging = self.staging_dir()
        return os.path.join(staging, "%s.tmp" % uuid.uuid4().hex)

    def staging_dir(self):
        path = os.path.dirname(self._inside(self.STAGING + "/x"))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise self._fail(exc, "creating the staging directory", self.STAGING)
        return path

    def put(self, key, data, overwrite=False):
        tmp = self._tempfile()
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            unlink_quietly(tmp)
            raise self._fail(exc, "writing", key)
        if overwrite:
            self._makedirs_for(key)
            target = self._inside(key)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                unlink_quietly(tmp)
                raise self._fail(exc, "writing", key)
            self._sync_dir(os.path.dirname(target), key)
            return True
        return self.put_file(key, tmp)

    def put_file(self, key, path):
        # link() is an atomic create-only rename: a concurrent writer of the same content
        # address loses the race harmlessly, and a reader never sees a partial object.
        try:
            self._makedirs_for(key)
            target = self._inside(key)
            os.link(path, target)
            self._sync_dir(os.path.dirname(target), key)
            return True
        except FileExistsError:
            if not stat_module.S_ISREG(os.lstat(target).st_mode):
                raise RemoteError("%s is not a regular file: a directory remote holds only regular files; remove it"
                                  % target)
            return False
        except OSError as exc:
            raise self._fail(exc, "writing", key)
        finally:
            unlink_quietly(path)

    def _makedirs_for(self, key):
        self._inside(key)   # never create directories through a symlink
        parent = os.path.dirname(self._path(key))
        missing = []
        while not os.path.isdir(parent) and parent != os.path.dirname(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        try:
            os.makedirs(os.path.dirname(self._path(key)), exist_ok=True)
        except OSError as exc:
            raise self._fail(exc, "creating directories for", key)
        for created in reversed(missing):       # a new directory is durable once its parent is synced
            self._sync_dir(os.path.dirname(created), key)

    def _sync_dir(self, path: str, key: str) -> None:
        """fsync a directory, so that an entry just linked, renamed or created in it survives a crash:
        a write is acknowledged (and a tag may name it) only once its name is on disk, not only its bytes."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise self._fail(exc, "syncing the directory of", key)
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):     # a filesystem that cannot sync directories
                raise self._fail(exc, "syncing the directory of", key)
        finally:
            os.close(fd)

    def delete(self, key):
        try:
            os.unlink(self._inside(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(exc, "deleting", key)

    def move(self, key, new_key):
        self._makedirs_for(new_key)
        source, target = self._inside(key), self._inside(new_key)
        try:
            os.rename(source, target)
        except OSError as exc:
            raise self._fail(exc, "moving to %s" % new_key, key)
        self._sync_dir(os.path.dirname(target), new_key)
        self._sync_dir(os.path.dirname(source), key)

    def remove_stale_staging(self, older_than: float) -> None:
        """Temp files of interrupted pushes; left alone while younger than `older_than` seconds."""
        staging = os.path.join(self.root, self.STAGING)
        cutoff = time.time() - older_than
        for entry in os.scandir(staging) if os.path.isdir(staging) else ():
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass


def _file_kind(mode: int) -> str:
    for test, name in ((stat_module.S_ISDIR, "a directory"), (stat_module.S_ISFIFO, "a FIFO"),
                       (stat_module.S_ISSOCK, "a socket"), (stat_module.S_ISCHR, "a device"),
                       (stat_module.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a file"


def unlink_quietly(path: str) -> None:
    """Remove a local spool or temporary file if it is there; a failure only leaves it behind."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_dir_for(remote: Remote) -> str:
    """A private spool directory for one operation, on the remote's filesystem when it has one."""
    return tempfile.mkdtemp(prefix="dogestry-", dir=remote.staging_dir())
