# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A remote wrapper that spools what it reads to a local file first (for a slow remote read while Docker waits).

May import _errors and _storage.base.
"""

from __future__ import annotations


class _SpooledRemote:
    """The remote, with layers kept in a spool directory for one `pull` into several daemons:
    each layer is downloaded once, and every daemon's load still decodes and verifies it."""

    def __init__(self, remote, spool_dir: str):
        from .blob_cache import BlobCache
        self._remote = remote
        self._cache = BlobCache(spool_dir, 1 << 62)

    def open(self, key, size=None):
        return self._cache.open(key, lambda: self._remote.open(key, size))     # kept once fetched whole

    def __getattr__(self, name):
        return getattr(self._remote, name)
