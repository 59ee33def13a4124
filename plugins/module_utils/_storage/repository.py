# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A remote seen through the format: version check, tags, manifests and configs, verified on read.

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Dict, Optional, Tuple, Union

from .._errors import BlobCorruptError, FormatError, ImageReferenceError, RemoteMissingError, RemoteNotFoundError
from .._format.keys import (
    QUARANTINE_PREFIX, VERSION_KEY, check_version_document, digest_of, image_index_key, image_index_prefix, manifest_key, oci_manifest_key, parse_digest,
    referrer_key, sha256_hex, source_key, split_digest, version_document, version_of,
)
from .._format.manifest import Manifest, diff_ids_of_config
from .._format.oci import Descriptor, OciManifest
from .._format.reference import ImageRef, id_prefix_hex, looks_like_id_prefix, parse_image_ref
from .._format.tags import parse_ref_document, parse_tag_document, ref_document, tag_from_key, tag_key
from .._transfer import parallel_map
from .base import Remote

MANIFEST_MEMO = 1024   # verified manifests kept per Repository
READ_JOBS = 8       # small metadata reads in flight at once (tags, manifests, index entries)
MAX_INDEX_DEPTH = 4     # indexes of indexes followed when choosing a platform
Target = Union[str, Descriptor]     # what a tag names: a dogestry manifest oid, or a verbatim OCI manifest


class Repository:
    def __init__(self, remote: Remote):
        self.remote = remote
        self.url = remote.url
        self._checked = False
        self._holds_oci = False
        # Verified manifests by oid: content-addressed, so never stale. A push plan looks at the
        # same manifest up to three times (tag, index, completeness); this saves those round trips.
        self._manifests: Dict[str, Manifest] = {}

    # -- version ------------------------------------------------------------------------------

    def check(self, create: bool = False) -> bool:
        """Check the version object; with create, write it into an empty remote. True if it exists."""
        if self._checked:
            return True
        try:
            check_version_document(self.remote.get(VERSION_KEY), self.url)
        except RemoteMissingError:
            raise
        except RemoteNotFoundError:
            if not create:
                raise RemoteNotFoundError(
                    "%s is not a dogestry remote yet (no %s): push an image to it first, or check the path"
                    % (self.url, VERSION_KEY))
            self.remote.put(VERSION_KEY, version_document())
            check_version_document(self.remote.get(VERSION_KEY), self.url)  # a concurrent creator may have won
        self._checked = True
        return True

    def hold_oci_content(self) -> None:
        """Raise the remote to format version 2 before its first verbatim OCI object, so that releases
        which cannot see such objects (and would prune their blobs) refuse it instead."""
        if self._holds_oci:
            return
        self.check(create=True)
        if version_of(self.remote.get(VERSION_KEY)) < 2:
            self.remote.put(VERSION_KEY, version_document(2), overwrite=True)
        self._holds_oci = True

    # -- tags ---------------------------------------------------------------------------------

    def read_target(self, ref: ImageRef) -> Optional[Target]:
        """What a tag names (None: no such tag)."""
        try:
            data = self.remote.get(tag_key(ref.name, ref.tag))
        except RemoteNotFoundError:
            return None
        return parse_tag_document(data, "tag %s on %s" % (ref, self.url))

    def read_tag(self, ref: ImageRef) -> Optional[str]:
        """The dogestry manifest a tag names; None when there is no such tag, or it names OCI content."""
        target = self.read_target(ref)
        return target if isinstance(target, str) else None

    def write_tag(self, ref: ImageRef, manifest_oid: str) -> None:
        self.remote.put(tag_key(ref.name, ref.tag), ref_document(manifest_oid), overwrite=True)

    def write_oci_tag(self, ref: ImageRef, descriptor: Descriptor) -> None:
        self.remote.put(tag_key(ref.name, ref.tag), descriptor.to_bytes(), overwrite=True)

    def delete_tag(self, ref: ImageRef) -> None:
        self.remote.delete(tag_key(ref.name, ref.tag))

    def list_tags(self, name_pattern: str = "*", tag_pattern: str = "*",
                  malformed: Optional[Dict[ImageRef, str]] = None) -> Dict[ImageRef, str]:
        """Tags naming dogestry manifests whose name and tag match the shell-style patterns, with their oids."""
        return {ref: target for ref, target in self.list_targets(name_pattern, tag_pattern, malformed).items()
                if isinstance(target, str)}

    def list_targets(self, name_pattern: str = "*", tag_pattern: str = "*",
                     malformed: Optional[Dict[ImageRef, str]] = None) -> Dict[ImageRef, Target]:
        """Every tag whose name and tag match the shell-style patterns, with what it names.

        A tag whose content is not a tag document raises FormatError, unless `malformed` is a dict: then
        it is recorded there (ref -> why) and left out, so one bad object does not hide the others."""
        prefix = "repositories/"
        literal = name_pattern.split("*")[0].split("?")[0].split("[")[0]
        if literal and literal == name_pattern:
            prefix += literal + "/_tags/"
        refs = []
        for info in self.remote.list(prefix):
            ref = tag_from_key(info.key)
            if ref and fnmatch.fnmatchcase(ref.name, name_pattern) and fnmatch.fnmatchcase(ref.tag, tag_pattern):
                refs.append(ref)

        def read(ref):
            try:
                return self.read_target(ref)
            except FormatError as exc:
                if malformed is None:
                    raise
                return exc
        refs.sort()
        targets = {}
        for ref, target in zip(refs, parallel_map(read, refs, READ_JOBS)):
            if isinstance(target, FormatError):
                malformed[ref] = str(target)
            elif target is not None:
                targets[ref] = target
        return targets

    # -- manifests and configs ----------------------------------------------------------------

    def read_manifest(self, oid: str) -> Manifest:
        if oid in self._manifests:
            return self._manifests[oid]
        key = manifest_key(oid)
        data = self.remote.get(key)
        if sha256_hex(data) != oid:
            raise BlobCorruptError("manifest %s on %s is corrupt: its content hashes to sha256:%s"
                                   % (oid, self.url, sha256_hex(data)))
        manifest = Manifest.from_bytes(data, "%s on %s" % (key, self.url))
        if len(self._manifests) >= MANIFEST_MEMO:
            self._manifests.clear()     # bounded: a long-running reader sees many
        self._manifests[oid] = manifest
        return manifest

    def write_oci_manifest(self, digest: str, manifest: OciManifest) -> None:
        """Store a manifest as pushed (raising the remote to version 2 first), then its referrer record; create-only,
        after everything it names. The registry's push path and dogestry_sign's signatures write manifests this way."""
        self.hold_oci_content()
        self.put_exact(oci_manifest_key(digest), manifest.data)
        if manifest.subject is not None:
            self.put_exact(referrer_key(manifest.subject.digest, digest), manifest.referrer(digest).to_bytes())

    def put_exact(self, key: str, data: bytes) -> None:
        """Create-only store of an object its key fixes the content of (a manifest, a referrer record): a copy
        already there that differs is damaged, and is quarantined and replaced before anything names it."""
        if self.remote.put(key, data):
            return
        try:
            intact = self.remote.get(key) == data
        except (RemoteNotFoundError, FormatError):
            intact = False
        if not intact:
            try:
                self.quarantine(key)
            except RemoteNotFoundError:
                pass        # moved or replaced meanwhile
            self.remote.put(key, data)

    def quarantine(self, key: str) -> str:
        """Move a damaged object aside, so that the next push stores it anew; returns where it went."""
        target = "%s%s/%s" % (QUARANTINE_PREFIX, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), key)
        self.remote.move(key, target)
        return target

    def read_oci_manifest(self, digest: str, content_type: Optional[str] = None) -> OciManifest:
        """A manifest stored verbatim, verified against its digest."""
        key = oci_manifest_key(digest)
        data = self.remote.get(key)
        algorithm, _hex = split_digest(digest)
        if digest_of(algorithm, data) != digest:
            raise BlobCorruptError("manifest %s on %s is corrupt: its content hashes to %s"
                                   % (digest, self.url, digest_of(algorithm, data)))
        return OciManifest.parse(data, content_type, "%s on %s" % (key, self.url))

    def image_for(self, target: Target, platform: Tuple[str, str, Optional[str]] = ("linux", "amd64", None),
                  what: str = "the image") -> str:
        """The dogestry manifest oid of what a tag names: itself, or for OCI content an image manifest
        (of the platform's child, for an index) whose image a registry push also stored decoded."""
        for _depth in range(MAX_INDEX_DEPTH):
            if isinstance(target, str):
                return target
            manifest = self.read_oci_manifest(target.digest)
            if manifest.is_index:
                child = manifest.platform_child(*platform)
                if child is None:
                    raise ImageReferenceError("%s on %s has no image for %s" % (what, self.url, "/".join(p for p in platform if p)))
                target = child
                continue
            oid = None
            if manifest.is_image and manifest.config.digest.startswith("sha256:"):
                oid = self.manifest_for_image(parse_digest(manifest.config.digest))
            if oid is None:
                kind = ("an artifact of type %s" % manifest.artifact_type if manifest.artifact_type
                        else "OCI content with layers it did not decode")
                raise ImageReferenceError("%s on %s is %s, not an image this collection can load (pull it through "
                                          "`dogestry serve` or with an OCI client)" % (what, self.url, kind))
            return oid
        raise ImageReferenceError("%s on %s nests indexes more than %d deep" % (what, self.url, MAX_INDEX_DEPTH))

    def read_manifests(self, oids, missing_ok: bool = False) -> Dict[str, Manifest]:
        """Several manifests in parallel; with missing_ok, absent ones are left out instead of raising."""
        def read(oid):
            try:
                return self.read_manifest(oid)
            except RemoteNotFoundError:
                if missing_ok:
                    return None
                raise
        unique = sorted(set(oids))
        return {oid: m for oid, m in zip(unique, parallel_map(read, unique, READ_JOBS)) if m is not None}

    def read_config(self, manifest: Manifest) -> bytes:
        """The image config, verified, and checked to declare exactly the manifest's layers."""
        data = self.remote.get(manifest.config_key)
        where = "image config sha256:%s on %s" % (manifest.config_oid, self.url)
        if sha256_hex(data) != manifest.config_oid:
            raise BlobCorruptError("%s is corrupt: its content hashes to sha256:%s" % (where, sha256_hex(data)))
        if diff_ids_of_config(data, where) != [layer.oid for layer in manifest.layers]:
            raise BlobCorruptError("%s does not declare the layers its manifest lists" % where)
        return data

    def write_manifest(self, manifest: Manifest) -> str:
        data = manifest.to_bytes()
        oid = sha256_hex(data)
        self.remote.put(manifest_key(oid), data)
        # The first complete manifest for an image ID is the one ID lookups find; an entry that
        # provably names another image (damaged, tampered) is replaced.
        index = image_index_key(manifest.config_oid)
        if not self.remote.put(index, ref_document(oid)) and self.manifest_for_image(manifest.config_oid) is None:
            self.remote.put(index, ref_document(oid), overwrite=True)
        return oid

    def source_manifest(self, daemon_id: str) -> Optional[str]:
        """The manifest a push from a containerd image store stored for that daemon's image ID (a hint:
        callers check it against the daemon's layers)."""
        try:
            data = self.remote.get(source_key(parse_digest(daemon_id)))
        except RemoteNotFoundError:
            return None
        return parse_ref_document(data, "source record of %s on %s" % (daemon_id, self.url))

    def write_source(self, daemon_id: str, manifest_oid: str) -> None:
        self.remote.put(source_key(parse_digest(daemon_id)), ref_document(manifest_oid), overwrite=True)

    def index_entry(self, config_oid: str) -> Optional[str]:
        """The manifest oid the image index names for an image ID, unchecked (None if there is none)."""
        try:
            data = self.remote.get(image_index_key(config_oid))
        except RemoteNotFoundError:
            return None
        return parse_ref_document(data, "image index of sha256:%s on %s" % (config_oid, self.url))

    def manifest_for_image(self, config_oid: str) -> Optional[str]:
        """The manifest of an image ID, through the index, checked to describe that very image.

        None when there is no entry, its manifest is gone, or the entry names another image's
        manifest (an index entry is only a hint: the manifest's own config digest decides).
        """
        try:
            entry = self.index_entry(config_oid)
            if entry is None or self.read_manifest(entry).config_oid != config_oid:
                return None
        except (RemoteNotFoundError, BlobCorruptError, FormatError):
            return None
        return entry

    # -- resolving what a user typed ----------------------------------------------------------

    def resolve(self, text: str, platform: Optional[Tuple[str, str, Optional[str]]] = None) -> Tuple[Optional[ImageRef], str]:
        """'name:tag' or a unique image-ID prefix -> (tag or None, manifest oid). A tag naming an OCI index
        gives the image of `platform` (os, architecture, variant; default linux/amd64)."""
        ref, target = self.resolve_target(text)
        return ref, self.image_for(target, platform or ("linux", "amd64", None), str(ref))

    def resolve_target(self, text: str) -> Tuple[Optional[ImageRef], Target]:
        """'name:tag' or a unique image-ID prefix -> (tag or None, what it names as it is stored: a dogestry
        manifest oid, or the descriptor of OCI content kept as pushed)."""
        text = str(text).strip()
        if looks_like_id_prefix(text):
            hexprefix = id_prefix_hex(text)
            prefix = image_index_prefix(hexprefix)
            matches = sorted(info.key[len(image_index_prefix()):] for info in self.remote.list(prefix))
            if len(matches) > 1:
                raise ImageReferenceError("image ID prefix %s is ambiguous on %s: it matches %s"
                                          % (hexprefix, self.url, ", ".join(m[:12] for m in matches[:10])))
            if matches:
                oid = self.manifest_for_image(matches[0])
                if oid is None:
                    raise BlobCorruptError(
                        "%s is damaged: image index entry %s does not name a readable manifest of that image "
                        "(run dogestry_verify with repair=true)" % (self.url, image_index_key(matches[0])))
                return None, oid
            if text.startswith("sha256:") or len(hexprefix) == 64:
                raise ImageReferenceError("no image with ID sha256:%s... on %s" % (hexprefix, self.url))
            # Otherwise a short hex string may still be a repository name ('cafe'): try name:latest.
        ref = parse_image_ref(text)
        target = self.read_target(ref)
        if target is None:
            raise ImageReferenceError("%s is not on %s: no such tag (dogestry_tag_info lists them)" % (ref, self.url))
        return ref, target
