# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The checks a push makes before it reuses a layer the remote already holds: a small blob is read and
verified whole, a large one sampled, an lz4 frame checked for its end mark.

May import _format, _codecs and _storage.
"""

from __future__ import annotations

from typing import Dict, List

from .._codecs import LZ4_ENDS, lz4_frame_ends_intact
from .._docker.load import LoadLayer, verified_chunks
from .._errors import BlobCorruptError, RemoteNotFoundError
from .._format.manifest import LayerEntry
from .._storage.repository import Repository


# ---- checks a push makes before it reuses stored layers --------------------------------------

LZ4_WORST_RATIO = 255           # an lz4 frame cannot shrink data by more than about this factor
SMALL_REUSE = 1 << 20           # reused blobs up to this stored size are read and verified whole


def damaged_reused_layers(repo: Repository, present: Dict[str, LayerEntry], sizes: Dict[str, int]) -> List[str]:
    """Of the stored layers a push would reuse (`present`, by oid), those whose stored copy cannot be
    that layer, now that `docker save` gave the layers' sizes.

    A raw blob must have the layer's exact size; an lz4 one a size an lz4 frame of it can have, and
    the two ends of a whole frame (a truncated copy has a plausible size); small ones are read and
    verified whole (cheap, and a few bytes of junk can look plausible).
    """
    damaged = []
    for oid, entry in sorted(present.items()):
        size, stored = sizes[oid], entry.stored_size
        if entry.encoding == "none":
            ok = stored == size
        else:
            ok = size // LZ4_WORST_RATIO <= stored <= size + size // LZ4_WORST_RATIO + 64 + 4 * (size >> 22)
        if ok and stored <= SMALL_REUSE:
            ok = _verifies(repo, LayerEntry(oid, size, entry.encoding, stored))
        elif ok and entry.encoding == "lz4":
            ok = _lz4_ends_intact(repo, entry.key, stored)
        if not ok:
            damaged.append(oid)
    return damaged


def read_verified(repo: Repository, layer: LayerEntry, what: str) -> None:
    """Read a stored layer whole, decoding and hashing it; BlobCorruptError on any mismatch."""
    with repo.remote.open(layer.key, layer.stored_size) as stored:
        for _chunk in verified_chunks(stored, LoadLayer(layer.oid, layer.size, layer.encoding, None, what)):
            pass


def _verifies(repo: Repository, layer: LayerEntry) -> bool:
    try:
        read_verified(repo, layer, layer.key)
        return True
    except (BlobCorruptError, RemoteNotFoundError):
        return False


def _lz4_ends_intact(repo: Repository, key: str, stored_size: int) -> bool:
    try:
        return lz4_frame_ends_intact(repo.remote.get_range(key, 0, LZ4_ENDS - 1),
                                     repo.remote.get_range(key, stored_size - LZ4_ENDS, stored_size - 1))
    except (BlobCorruptError, RemoteNotFoundError):
        return False
