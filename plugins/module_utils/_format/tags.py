# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Tags and refs as stored: a tag's key, and the small documents a tag or a ref holds (a manifest's oid, or a
descriptor of pushed OCI content).

Pure: no I/O. May import _errors and the rest of _format.
"""

from __future__ import annotations

from typing import Optional, Union

from .._errors import FormatError
from .keys import load_json, parse_digest
from .oci import Descriptor
from .reference import ImageRef, _NAME, _TAG


def tag_key(name: str, tag: str) -> str:
    # "_tags" cannot be a name component, so "a:x" and "a/b:x" never collide on a filesystem.
    return "repositories/%s/_tags/%s" % (name, tag)


def tag_from_key(key: str) -> Optional["ImageRef"]:
    if not key.startswith("repositories/"):
        return None
    name, sep, tag = key[len("repositories/"):].rpartition("/_tags/")
    if not sep or not _NAME.match(name) or not _TAG.match(tag):
        return None
    return ImageRef(name, tag)


def ref_document(manifest_oid: str) -> bytes:
    return ("sha256:%s\n" % manifest_oid).encode("ascii")


def parse_ref_document(data: bytes, where: str) -> str:
    try:
        return parse_digest(data.decode("ascii").strip())
    except (UnicodeDecodeError, FormatError):
        raise FormatError("%s does not hold a manifest digest" % where)


def parse_tag_document(data: bytes, where: str) -> Union[str, "Descriptor"]:
    """A tag's target: a dogestry manifest oid (version 1), or the Descriptor of a verbatim OCI manifest."""
    if data[:1] == b"{":
        try:
            return Descriptor.from_doc(load_json(data))
        except (ValueError, FormatError) as exc:
            raise FormatError("%s does not hold a manifest descriptor (%s)" % (where, exc))
    return parse_ref_document(data, where)
