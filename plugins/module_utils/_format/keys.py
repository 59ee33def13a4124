# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Where each thing lives in a store: object keys, digests, the version object, tag and ref documents.

Pure: no I/O. May import _errors only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Tuple

from .._errors import FormatError


FORMAT_NAME = "dogestry"
FORMAT_VERSION = 2          # what this version reads up to; it writes 1 until a remote holds OCI content
READABLE_VERSIONS = (1, 2)
VERSION_KEY = "dogestry.json"
QUARANTINE_PREFIX = "quarantine/"      # damaged objects moved aside by verify's repair (and by push)


# Digest algorithms of verbatim content, with their hex lengths (layers stored decoded are sha256).
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}


# Encodings a layer blob may be stored in, mapped to the key suffix.
ENCODINGS = {"none": "", "lz4": ".lz4"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def load_json(data):
    """json.loads for data read from a remote or a daemon: every failure a ValueError, including
    hostile nesting (the parser's RecursionError) and bytes that are not UTF-8."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply")


def version_document(version: int = 1) -> bytes:
    """A remote is created as version 1, readable by every release; OCI content raises it to 2."""
    return canonical_json({"format": FORMAT_NAME, "version": version})


def version_of(data: bytes) -> int:
    return load_json(data)["version"]


def check_version_document(data: bytes, where: str) -> None:
    try:
        doc = load_json(data)
        name, version = doc["format"], doc["version"]
    except (ValueError, TypeError, KeyError):
        raise FormatError("%s is not a dogestry remote: %s is not valid" % (where, VERSION_KEY))
    if name != FORMAT_NAME:
        raise FormatError("%s is not a dogestry remote: %s names format %r" % (where, VERSION_KEY, name))
    if version not in READABLE_VERSIONS:
        raise FormatError(
            "%s uses dogestry format version %r; this collection reads versions up to %d: upgrade the collection"
            % (where, version, FORMAT_VERSION))


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_digest(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>'; anything else is a FormatError (the remote or daemon lied)."""
    algo, _sep, hexdigest = str(digest).partition(":")
    if algo != "sha256" or not _HEX64.match(hexdigest):
        raise FormatError("unsupported or malformed digest %r" % (digest,))
    return hexdigest


def split_digest(digest: str) -> Tuple[str, str]:
    """'sha256:<hex>' or 'sha512:<hex>' -> (algorithm, hex); anything else is a FormatError."""
    algo, _sep, hexdigest = str(digest).partition(":")
    length = DIGEST_ALGORITHMS.get(algo)
    if length is None or len(hexdigest) != length or any(c not in "0123456789abcdef" for c in hexdigest):
        raise FormatError("unsupported or malformed digest %r" % (str(digest)[:150],))
    return algo, hexdigest


def digest_of(algorithm: str, data: bytes) -> str:
    return "%s:%s" % (algorithm, hashlib.new(algorithm, data).hexdigest())


# ---- keys -----------------------------------------------------------------------------------

def blob_key(oid: str, encoding: str = "none") -> str:
    return "blobs/sha256/%s/%s%s" % (oid[:2], oid, ENCODINGS[encoding])


def object_key(digest: str) -> str:
    """Where a blob pushed verbatim is stored: blobs/<alg>/<ab>/<hex> (for sha256, blob_key(hex))."""
    algo, hexdigest = split_digest(digest)
    return "blobs/%s/%s/%s" % (algo, hexdigest[:2], hexdigest)


OCI_MANIFESTS_PREFIX = "oci-manifests/"
REFERRERS_PREFIX = "referrers/"


def oci_manifest_key(digest: str) -> str:
    algo, hexdigest = split_digest(digest)
    return "%s%s/%s" % (OCI_MANIFESTS_PREFIX, algo, hexdigest)


def referrers_prefix(subject: str) -> str:
    algo, hexdigest = split_digest(subject)
    return "%s%s/%s/" % (REFERRERS_PREFIX, algo, hexdigest)


def referrer_key(subject: str, digest: str) -> str:
    return referrers_prefix(subject) + digest.replace(":", "-", 1)


def manifest_key(oid: str) -> str:
    return "manifests/sha256/%s" % oid


def image_index_prefix(id_prefix: str = "") -> str:
    return "images/sha256/%s" % id_prefix


def image_index_key(config_oid: str) -> str:
    return image_index_prefix(config_oid)


def source_key(daemon_id_hex: str) -> str:
    """Containerd image store: the daemon's image ID (its manifest digest) -> the manifest a push stored."""
    return "sources/sha256/%s" % daemon_id_hex


PUSHED_PREFIX = "pushed/"


def pushed_key(digest: str) -> str:
    """pushed/<alg>/<hex>: the PushRecord of a blob pushed through a registry endpoint (the registry's writer, the engine's loopback endpoint)."""
    algo, hexdigest = split_digest(digest)
    return "%s%s/%s" % (PUSHED_PREFIX, algo, hexdigest)
