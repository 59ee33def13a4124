# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The dogestry manifest: an image's config and layers as stored (LayerEntry, Manifest), push records, ChainIDs.

Pure: no I/O. May import _errors and the rest of _format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .._errors import FormatError
from .keys import ENCODINGS, blob_key, canonical_json, load_json, parse_digest, sha256_hex
from .oci import OCI_CONFIG_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, _size


MANIFEST_MEDIA_TYPE = "application/vnd.dogestry.manifest.v1+json"


# ---- manifests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerEntry:
    oid: str            # sha256 of the uncompressed layer tar == Docker's diff_id
    size: int           # uncompressed size: what a registry API would announce
    encoding: str       # key of ENCODINGS
    stored_size: int    # bytes of the stored object

    @property
    def key(self) -> str:
        return blob_key(self.oid, self.encoding)


@dataclass(frozen=True)
class Manifest:
    config_oid: str
    config_size: int
    layers: Tuple[LayerEntry, ...]

    @property
    def config_key(self) -> str:
        return blob_key(self.config_oid)

    @property
    def image_id(self) -> str:
        return "sha256:" + self.config_oid

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schema_version": 1,
            "media_type": MANIFEST_MEDIA_TYPE,
            "config": {"digest": "sha256:" + self.config_oid, "size": self.config_size},
            "layers": [
                {"digest": "sha256:" + layer.oid, "size": layer.size,
                 "encoding": layer.encoding, "stored_size": layer.stored_size}
                for layer in self.layers
            ],
        })

    def oci_bytes(self) -> bytes:
        """The OCI image manifest of this image (canonical JSON): the same bytes, so the same
        digest, wherever and whenever it is rendered (docker load into the containerd store,
        the registry API)."""
        return canonical_json({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": "sha256:" + self.config_oid,
                       "size": self.config_size},
            "layers": [{"mediaType": OCI_LAYER_MEDIA_TYPE, "digest": "sha256:" + layer.oid, "size": layer.size}
                       for layer in self.layers],
        })

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        try:
            doc = load_json(data)
            if doc.get("media_type") != MANIFEST_MEDIA_TYPE:
                raise ValueError("media type %r" % doc.get("media_type"))
            layers = tuple(
                LayerEntry(parse_digest(entry["digest"]), _size(entry["size"]), _encoding(entry["encoding"]),
                           _size(entry["stored_size"]))
                for entry in doc["layers"]
            )
            return cls(parse_digest(doc["config"]["digest"]), _size(doc["config"]["size"]), layers)
        except (ValueError, TypeError, KeyError, AttributeError, FormatError) as exc:
            raise FormatError("manifest %s is malformed (%s)" % (where, exc))


@dataclass(frozen=True)
class PushRecord:
    """What a blob pushed through a registry endpoint (the registry API, or the engine's loopback endpoint) was
    stored as, under pushed/<alg>/<hex> (pushed_key; docs/FORMAT.md, "Push records"): its size, and for a layer,
    the layer it decoded to."""
    blob_size: int                      # bytes of the blob as pushed
    layer: Optional[LayerEntry] = None  # the stored layer: diff_id, uncompressed size, encoding, stored size

    def to_bytes(self) -> bytes:
        doc = {"blob_size": self.blob_size}
        if self.layer is not None:
            doc.update(diff_id="sha256:" + self.layer.oid, size=self.layer.size, encoding=self.layer.encoding,
                       stored_size=self.layer.stored_size)
        return canonical_json(doc)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "PushRecord":
        try:
            doc = load_json(data)
            if "diff_id" not in doc:
                return cls(_size(doc["blob_size"]))
            return cls(_size(doc["blob_size"]), LayerEntry(parse_digest(doc["diff_id"]), _size(doc["size"]),
                                                           _encoding(doc["encoding"]), _size(doc["stored_size"])))
        except (ValueError, TypeError, KeyError, AttributeError, FormatError) as exc:
            raise FormatError("push record %s is malformed (%s)" % (where, exc))


def _encoding(value) -> str:
    if value not in ENCODINGS:
        raise ValueError("unknown encoding %r" % (value,))
    return value


def diff_ids_of_config(config_bytes: bytes, where: str) -> List[str]:
    """The ordered layer oids an image config declares (rootfs.diff_ids)."""
    try:
        doc = load_json(config_bytes)
        if doc["rootfs"]["type"] != "layers":
            raise ValueError("rootfs type %r" % doc["rootfs"]["type"])
        return [parse_digest(d) for d in doc["rootfs"]["diff_ids"]]
    except (ValueError, TypeError, KeyError, FormatError) as exc:
        raise FormatError("image config %s is malformed (%s)" % (where, exc))


def chain_ids(diff_ids: List[str]) -> List[str]:
    """ChainID(L0) = L0; ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + Ln), as Docker's layer store keys them."""
    chains: List[str] = []
    for oid in diff_ids:
        if not chains:
            chains.append(oid)
        else:
            chains.append(sha256_hex(("sha256:%s sha256:%s" % (chains[-1], oid)).encode("ascii")))
    return chains
