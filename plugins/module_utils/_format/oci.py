# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""OCI and Docker media types, descriptors and image manifests as pushed by registry clients, kept verbatim.

Pure: no I/O. May import _errors and the rest of _format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .._errors import FormatError
from .keys import canonical_json, load_json, split_digest


# How an image is shown to Docker and registry clients: an OCI manifest whose layers are the
# uncompressed tars (digest = diff_id), so its digest depends only on the image, never on the host.
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFEST_MEDIA_TYPES = (OCI_MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE)
INDEX_MEDIA_TYPES = (OCI_INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE)
IMAGE_CONFIG_MEDIA_TYPES = (OCI_CONFIG_MEDIA_TYPE, "application/vnd.docker.container.image.v1+json")


def _size(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("bad size %r" % (value,))
    return value


# ---- OCI content stored verbatim (version 2) -------------------------------------------------

@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a tag names, and what manifests list."""
    media_type: str
    digest: str
    size: int
    extra: Tuple[Tuple[str, Any], ...] = ()     # artifactType, annotations, platform: for referrers and indexes

    @property
    def fields(self) -> Dict[str, Any]:
        return dict(self.extra)

    def to_doc(self) -> Dict[str, Any]:
        doc = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        doc.update(self.extra)
        return doc

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_doc())

    @classmethod
    def from_doc(cls, doc, keep=()) -> "Descriptor":
        """A descriptor from JSON, keeping the optional fields named in `keep`."""
        if not isinstance(doc, dict):
            raise FormatError("a descriptor is not a JSON object")
        media_type = doc.get("mediaType", "")
        if not isinstance(media_type, str) or len(media_type) > 255:
            raise FormatError("bad media type %r" % (str(media_type)[:100],))
        try:
            size = _size(doc.get("size"))
        except ValueError as exc:
            raise FormatError(str(exc))
        split_digest(doc.get("digest"))
        extra = tuple((key, doc[key]) for key in keep if doc.get(key) is not None)
        return cls(media_type, doc["digest"], size, extra)


LAYER_MEDIA_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
FOREIGN_LAYER_MARKERS = ("nondistributable", "foreign")
MAX_DESCRIPTORS = 10000


@dataclass(frozen=True)
class OciManifest:
    """An image manifest, index or artifact manifest as pushed: the bytes, and what they name."""
    data: bytes
    media_type: str
    config: Optional[Descriptor]
    layers: Tuple[Descriptor, ...]
    manifests: Tuple[Descriptor, ...]      # an index's children, with their platforms
    subject: Optional[Descriptor]
    artifact_type: Optional[str]
    annotations: Optional[Dict[str, str]]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def is_image(self) -> bool:
        """A container image the engine can load: an image config and only image layers."""
        return (self.media_type in IMAGE_MANIFEST_MEDIA_TYPES and self.config is not None
                and self.config.media_type in IMAGE_CONFIG_MEDIA_TYPES
                and all(layer.media_type.startswith(LAYER_MEDIA_PREFIXES) for layer in self.layers))

    def required(self) -> Tuple[Descriptor, ...]:
        """Blobs that must be stored before this manifest is (foreign layers are fetched from their URLs)."""
        blobs = ((self.config,) if self.config else ()) + self.layers
        return tuple(d for d in blobs if not any(m in d.media_type for m in FOREIGN_LAYER_MARKERS)
                     and not d.fields.get("urls"))

    def referrer(self, digest: str) -> Descriptor:
        """How the referrers API lists this manifest (the spec's artifactType rule: the field, else
        the config's media type)."""
        artifact = self.artifact_type or (self.config.media_type if self.config else None)
        extra = tuple((k, v) for k, v in (("annotations", self.annotations), ("artifactType", artifact)) if v)
        return Descriptor(self.media_type, digest, len(self.data), extra)

    @classmethod
    def parse(cls, data: bytes, content_type: Optional[str], where: str) -> "OciManifest":
        try:
            doc = load_json(data)
            if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
                raise FormatError("schemaVersion is not 2")
            declared = doc.get("mediaType")
            media_type = declared or (content_type or "").split(";")[0].strip()
            if not media_type:
                media_type = OCI_INDEX_MEDIA_TYPE if "manifests" in doc else OCI_MANIFEST_MEDIA_TYPE
            if declared and content_type and content_type.split(";")[0].strip() not in ("", declared):
                raise FormatError("Content-Type %r differs from the mediaType field %r" % (content_type[:100], declared[:100]))
            if media_type not in IMAGE_MANIFEST_MEDIA_TYPES + INDEX_MEDIA_TYPES:
                raise FormatError("media type %r is not an image manifest or index" % media_type[:100])
            keep = ("annotations", "artifactType", "platform", "urls", "data")
            if media_type in INDEX_MEDIA_TYPES:
                children = doc.get("manifests")
                if not isinstance(children, list) or len(children) > MAX_DESCRIPTORS:
                    raise FormatError("an index needs a manifests list")
                config, layers, manifests = None, (), tuple(Descriptor.from_doc(d, keep) for d in children)
            else:
                layer_docs = doc.get("layers")
                if not isinstance(layer_docs, list) or len(layer_docs) > MAX_DESCRIPTORS:
                    raise FormatError("an image manifest needs a layers list")
                config = Descriptor.from_doc(doc.get("config"), keep)
                layers, manifests = tuple(Descriptor.from_doc(d, keep) for d in layer_docs), ()
            subject = Descriptor.from_doc(doc["subject"]) if doc.get("subject") is not None else None
            artifact_type = doc.get("artifactType")
            annotations = doc.get("annotations")
            if artifact_type is not None and not isinstance(artifact_type, str):
                raise FormatError("artifactType is not a string")
            if annotations is not None and not isinstance(annotations, dict):
                raise FormatError("annotations is not an object")
        except (ValueError, TypeError, AttributeError) as exc:
            raise FormatError("%s is not a valid manifest (%s)" % (where, exc))
        except FormatError as exc:
            raise FormatError("%s is not a valid manifest (%s)" % (where, exc))
        return cls(data, media_type, config, layers, manifests, subject, artifact_type, annotations)

    def platform_child(self, os_name: str, architecture: str, variant: Optional[str] = None) -> Optional[Descriptor]:
        """The child of an index for a platform (the first match; a variant only narrows)."""
        matches = []
        for child in self.manifests:
            platform = child.fields.get("platform") or {}
            if platform.get("os") == os_name and platform.get("architecture") == architecture:
                matches.append((variant is not None and platform.get("variant") == variant, child))
        return max(matches, key=lambda m: m[0])[1] if matches else None
