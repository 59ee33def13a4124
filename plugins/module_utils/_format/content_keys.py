# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""What a content-addressed key promises about its object (algorithm, digest, encoding): such an object
can be verified from its own name, so it may be read from any copy (a fleet peer, a mirror of the remote).

Pure: no I/O. May import nothing of the collection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


# Content-addressed keys only: each is verifiable from its own name (docs/FORMAT.md). Tags, the
# version object, listings and writes never go to peers.
PEER_KEY = re.compile(r"^(?:blobs/(?:sha256/(?P<ab>[0-9a-f]{2})/(?P<hex>[0-9a-f]{64})(?P<lz4>\.lz4)?"
                      r"|sha512/(?P<ab5>[0-9a-f]{2})/(?P<hex5>[0-9a-f]{128}))"
                      r"|manifests/sha256/(?P<mhex>[0-9a-f]{64})"
                      r"|oci-manifests/(?:sha256/(?P<ohex>[0-9a-f]{64})|sha512/(?P<ohex5>[0-9a-f]{128})))$")


@dataclass(frozen=True)
class PeerKey:
    algorithm: str
    hexdigest: str
    encoding: str       # "lz4": the key's digest is that of the decoded content; "none": of the bytes


def peer_key(key: str) -> Optional[PeerKey]:
    """What a key promises about its content, or None when it is no key for peers."""
    match = PEER_KEY.match(key)
    if match is None:
        return None
    groups = match.groupdict()
    if groups["hex"] is not None:
        if groups["ab"] != groups["hex"][:2]:
            return None
        return PeerKey("sha256", groups["hex"], "lz4" if groups["lz4"] else "none")
    if groups["hex5"] is not None:
        return PeerKey("sha512", groups["hex5"], "none") if groups["ab5"] == groups["hex5"][:2] else None
    if groups["mhex"] is not None or groups["ohex"] is not None:
        return PeerKey("sha256", groups["mhex"] or groups["ohex"], "none")
    return PeerKey("sha512", groups["ohex5"], "none")
