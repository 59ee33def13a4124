# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Docker image references: the name and tag grammar (distribution's), familiar and full names, ID prefixes.

Pure: no I/O. May import _errors only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .._errors import ImageReferenceError


# docker/distribution reference grammar, in the "familiar" form the daemon shows in RepoTags.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_NAME = re.compile(r"^(?:%s/)?%s(?:/%s)*$" % (_DOMAIN, _COMPONENT, _COMPONENT))
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# ---- image references -----------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class ImageRef:
    name: str
    tag: str

    def __str__(self) -> str:
        return "%s:%s" % (self.name, self.tag)


def familiar_name(name: str) -> str:
    """Docker Hub names the way `docker images` shows them: docker.io/library/redis -> redis."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def full_name(name: str) -> str:
    """The inverse of familiar_name, as containerd names images: redis -> docker.io/library/redis,
    team/app -> docker.io/team/app; a name with a registry host is already full."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return "docker.io/library/" + name
    if "." in first or ":" in first or first == "localhost":
        return name
    return "docker.io/" + name


def parse_image_ref(text: str, default_tag: Optional[str] = "latest") -> ImageRef:
    """'registry:5000/team/app:1.2' -> ImageRef('registry:5000/team/app', '1.2')."""
    text = str(text).strip()
    if "@" in text:
        raise ImageReferenceError("%r: digest references are not supported; use name:tag or an image ID" % text)
    name, tag = text, default_tag
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        name, tag = text[:colon], text[colon + 1:]
    name = familiar_name(name)
    if not _NAME.match(name) or len(name) > 255:
        raise ImageReferenceError("%r is not a valid image name (lowercase, like registry.example.com:5000/team/app)" % text)
    if tag is None:
        raise ImageReferenceError("%r has no tag: write it as name:tag" % text)
    if not _TAG.match(tag):
        raise ImageReferenceError("%r has an invalid tag %r (letters, digits, '_', '.', '-'; at most 128)" % (text, tag))
    return ImageRef(name, tag)


def looks_like_id_prefix(text: str) -> bool:
    """'sha256:1dc6', '1dc66c9bbfee': hex of 4..64 characters, as the original tool accepted."""
    hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
    return 4 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart)


def id_prefix_hex(text: str) -> str:
    return text[len("sha256:"):] if text.startswith("sha256:") else text
