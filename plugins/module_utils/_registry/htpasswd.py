# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""`dogestry serve --htpasswd`: Basic auth by the users of a Docker registry htpasswd file.

A check costs one bcrypt comparison whoever asks: an unknown user is compared with a dummy hash,
as distribution's registry/auth/htpasswd does, so timing does not tell who exists. Wrong
passwords are throttled per client address, and the file is read again when it changes, so a
removed user loses access without a restart.

May import every layer below and the rest of _registry; not _cli or _common.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
import os
import re
import threading
import time
from typing import Dict, Optional, Tuple

try:
    import bcrypt
    HAS_BCRYPT = True
except ImportError:
    HAS_BCRYPT = False

from .._errors import DogestryError

LOG = logging.getLogger("dogestry.serve")
FAILURES_ALLOWED = 5        # wrong passwords from one address within FAILURE_WINDOW before it gets 429s
FAILURE_WINDOW = 60.0
RELOAD_SECONDS = 2.0        # the htpasswd file is looked at again at most this often
MAX_PASSWORD = 72           # bcrypt's limit: a longer password is refused, as distribution's htpasswd does
_BCRYPT_HASH = re.compile(rb"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


class Throttled(Exception):
    """Too many wrong passwords from one address: answer 429 without spending a bcrypt check."""

    def __init__(self, retry_after: float):
        Exception.__init__(self, "retry in %.0f s" % retry_after)
        self.retry_after = retry_after


class Htpasswd:
    """Users of a Docker registry htpasswd file (`user:bcrypt-hash` lines, as `htpasswd -B` writes)."""

    MAX_GOOD = 1000             # accepted credentials remembered (bcrypt costs milliseconds a check)
    MAX_CLIENTS = 10000         # addresses whose recent failures are remembered

    def __init__(self, path: str, clock=time.monotonic):
        if not HAS_BCRYPT:
            raise DogestryError("--htpasswd needs the Python package 'bcrypt': pip install bcrypt")
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self.users, self._dummy, self._stamp = self._load()
        self._looked = clock()
        self._good: Dict[str, str] = {}         # sha256 of an accepted Authorization header -> user
        self._failures: "collections.OrderedDict[str, collections.deque]" = collections.OrderedDict()

    def _load(self):
        """(users, a dummy hash at their usual cost, the file's identity); DogestryError if it is unusable."""
        try:
            with open(self.path, "rb") as f:
                stamp = _stamp(os.fstat(f.fileno()))
                lines = f.read().splitlines()
        except OSError as exc:
            raise DogestryError("--htpasswd %s: %s" % (self.path, exc.strerror or exc))
        users: Dict[str, bytes] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith(b"#"):
                continue
            user, sep, hashed = line.partition(b":")
            if not sep or not _BCRYPT_HASH.match(hashed):
                raise DogestryError("--htpasswd %s line %d: expected user:bcrypt-hash (htpasswd -B)" % (self.path, number))
            users[user.decode("utf-8", "replace")] = b"$2b$" + hashed[4:]     # $2y$ is $2b$ to the bcrypt package
        if not users:
            raise DogestryError("--htpasswd %s names no user" % self.path)
        costs = collections.Counter(int(hashed[4:6]) for hashed in users.values())
        cost = max(costs, key=lambda c: (costs[c], c))
        return users, bcrypt.hashpw(b"dogestry: no such user", bcrypt.gensalt(rounds=cost)), stamp

    def _reload_if_changed(self) -> None:
        now = self._clock()
        with self._lock:
            if now - self._looked < RELOAD_SECONDS:
                return
            self._looked = now
        try:
            stamp = _stamp(os.stat(self.path))
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            users, dummy, stamp = self._load()
            LOG.info("--htpasswd %s changed: %d user(s)", self.path, len(users))
        except DogestryError as exc:
            LOG.error("%s: refusing every request until it is fixed", exc)
            users, dummy = {}, self._dummy
        with self._lock:
            self.users, self._dummy, self._stamp = users, dummy, stamp
            self._good.clear()

    def check(self, authorization: Optional[str], client: str) -> bool:
        """Whether `authorization` names a user and its password; Throttled after too many failures."""
        self._reload_if_changed()
        if not authorization or not authorization.startswith("Basic "):
            return False
        key = hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()
        with self._lock:
            if key in self._good:
                return True
        self._throttle(client)
        try:
            user, sep, password = base64.b64decode(authorization[6:].strip(), validate=True).partition(b":")
        except ValueError:
            return False
        name = user.decode("utf-8", "replace")
        with self._lock:
            hashed, dummy = self.users.get(name), self._dummy
        matched = _bcrypt_matches(password, hashed or dummy) and hashed is not None and bool(sep)
        with self._lock:
            if matched:
                if len(self._good) >= self.MAX_GOOD:
                    self._good.clear()
                self._good[key] = name
                self._failures.pop(client, None)
            else:
                self._failures.setdefault(client, collections.deque()).append(self._clock())
                self._failures.move_to_end(client)
                if len(self._failures) > self.MAX_CLIENTS:
                    self._failures.popitem(last=False)
        return matched

    def _throttle(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            while times and now - times[0] >= FAILURE_WINDOW:
                times.popleft()
            if times and len(times) >= FAILURES_ALLOWED:
                raise Throttled(FAILURE_WINDOW - (now - times[0]))


def _stamp(info: os.stat_result) -> Tuple[int, int, int]:
    return info.st_ino, info.st_mtime_ns, info.st_size


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    """bcrypt's verdict; a password over its 72 bytes is compared too (the same cost), then refused."""
    try:
        return bool(bcrypt.checkpw(password[:MAX_PASSWORD], hashed)) and len(password) <= MAX_PASSWORD
    except ValueError:          # a hash the file check let through but bcrypt refuses: no match
        return False
