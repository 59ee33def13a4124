# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Minimum versions of the Python libraries the collection uses: the one table that requirements.txt,
pyproject.toml, meta/ee-requirements.txt and the modules' documented requirements state
(tests/unit/plugins/module_utils/test__version.py keeps them in step), and that the front ends check.

A base module: may import _errors only.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

from ._errors import DogestryError

MINIMUM_VERSIONS = {
    "docker": "7.1.0",      # older ones fail with requests >= 2.32 ("Not supported URL scheme http+docker")
    "lz4": "4.0.0",         # lz4.frame's LZ4FrameCompressor/Decompressor streaming API; 4.x is what is tested
    "zstandard": "0.19.0",  # stream_reader(read_across_frames=True), for the containerd store's zstd layers
    "boto3": "1.35.2",      # its botocore is the first to know IfNoneMatch (conditional writes) on PutObject
}


def version_tuple(text: str) -> Tuple[int, ...]:
    """'1.35.2rc1' -> (1, 35, 2): the release numbers only (no packaging library needed)."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def installed_versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries the engine uses, None where missing (reported with failures)."""
    versions = {}
    for name in MINIMUM_VERSIONS:
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    return versions


def too_old(versions: Dict[str, Optional[str]], names: Iterable[str]) -> List[str]:
    """'docker 7.0.0 (needs >= 7.1.0)' for each of `names` installed below its minimum."""
    return ["%s %s (needs >= %s)" % (name, versions[name], MINIMUM_VERSIONS[name]) for name in names
            if versions.get(name) and version_tuple(versions[name]) < version_tuple(MINIMUM_VERSIONS[name])]


def require(names: Iterable[str], what: str) -> None:
    """Raise a one-line DogestryError when one of `names` is installed but too old for `what`
    (a missing one is reported where it is imported)."""
    old = too_old(installed_versions(), names)
    if old:
        raise DogestryError("too old for %s: %s; upgrade with pip install -U %s"
                            % (what, ", ".join(old), " ".join(line.split()[0] for line in old)))


def require_for_url(url: str) -> None:
    """The libraries a remote URL needs beyond the engine's own: boto3 for s3://."""
    if str(url or "").strip().lower().startswith("s3://"):
        require(["boto3"], "s3:// remotes")
