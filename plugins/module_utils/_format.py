# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The remote repository format, versions 1 and 2 (docs/FORMAT.md is the prose twin of this file).

Keys, relative to the remote's root::

    dogestry.json                          {"format": "dogestry", "version": 1}; readers check it first
    blobs/sha256/<ab>/<hex>                image config or uncompressed layer, named by its sha256
    blobs/sha256/<ab>/<hex>.lz4            layer as one lz4 frame, named by its *uncompressed* sha256
    manifests/sha256/<hex>                 canonical JSON manifest, named by the sha256 of its bytes
    images/sha256/<config-hex>             "sha256:<manifest-hex>": finds a manifest by image ID (prefix)
    sources/sha256/<daemon-id-hex>         "sha256:<manifest-hex>": what a push from a containerd image
                                           store stored for that daemon image ID (a checked hint)
    pushed/sha256/<blob-hex>               what a blob pushed through the registry API was stored as (a hint)
    repositories/<name>/_tags/<tag>        "sha256:<manifest-hex>": the only objects ever rewritten

Version 2 adds any OCI content pushed through the registry API, stored verbatim:

    blobs/<alg>/<ab>/<hex>                 any blob, as pushed (alg: sha256 or sha512)
    pushed/<alg>/<hex>                     its push record, as pushed/sha256/ above
    oci-manifests/<alg>/<hex>              an image manifest, index or artifact manifest, as pushed
    referrers/<alg>/<subject-hex>/<alg>-<hex>   descriptor of a manifest whose subject is <subject>
    repositories/<name>/_tags/<tag>        or an OCI descriptor (canonical JSON) of a verbatim manifest

Everything but a tag is immutable and written create-only, in the order blobs, config,
manifest, image index, tag, so a tag never points at incomplete data.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from ._errors import FormatError, ImageReferenceError

FORMAT_NAME = "dogestry"
FORMAT_VERSION = 2          # what this version reads up to; it writes 1 until a remote holds OCI content
READABLE_VERSIONS = (1, 2)
VERSION_KEY = "dogestry.json"
QUARANTINE_PREFIX = "quarantine/"      # damaged objects moved aside by verify's repair (and by push)
MANIFEST_MEDIA_TYPE = "application/vnd.dogestry.manifest.v1+json"
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
# Digest algorithms of verbatim content, with their hex lengths (layers stored decoded are sha256).
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}

# Encodings a layer blob may be stored in, mapped to the key suffix.
ENCODINGS = {"none": "", "lz4": ".lz4"}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# docker/distribution reference grammar, in the "familiar" form the daemon shows in RepoTags.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_NAME = re.compile(r"^(?:%s/)?%s(?:/%s)*$" % (_DOMAIN, _COMPONENT, _COMPONENT))
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


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
    """pushed/<alg>/<hex>: the PushRecord of a blob pushed through a registry endpoint (_registry_push, _loopback)."""
    algo, hexdigest = split_digest(digest)
    return "%s%s/%s" % (PUSHED_PREFIX, algo, hexdigest)


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


def _size(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("bad size %r" % (value,))
    return value


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
