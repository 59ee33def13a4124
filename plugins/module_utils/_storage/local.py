# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A directory as a remote: atomic writes (temporary file, fsync, link or rename, fsync of the directory).

May import _errors and _storage.base.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as stat_module
import time
import uuid

from .._errors import RemoteAuthError, RemoteError, RemoteNotFoundError, RemoteUnsupportedError
from .base import ObjectInfo, Remote, _whole_range, unlink_quietly


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
