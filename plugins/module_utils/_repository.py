# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A remote seen through the format: version check, tags, manifests and configs, verified on read."""

from __future__ import annotations

import fnmatch
from typing import Dict, Optional, Tuple

from ._errors import BlobCorruptError, FormatError, ImageReferenceError, RemoteMissingError, RemoteNotFoundError
from ._format import (
    VERSION_KEY, ImageRef, Manifest, check_version_document, diff_ids_of_config, id_prefix_hex,
    image_index_key, image_index_prefix, looks_like_id_prefix, manifest_key, parse_image_ref,
    parse_digest, parse_ref_document, ref_document, sha256_hex, source_key, tag_from_key, tag_key, version_document,
)
from ._remote import Remote
from ._transfer import parallel_map

MANIFEST_MEMO = 1024   # verified manifests kept per Repository
READ_JOBS = 8       # small metadata reads in flight at once (tags, manifests, index entries)


class Repository:
    def __init__(self, remote: Remote):
        self.remote = remote
        self.url = remote.url
        self._checked = False
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

    # -- tags ---------------------------------------------------------------------------------

    def read_tag(self, ref: ImageRef) -> Optional[str]:
        try:
            data = self.remote.get(tag_key(ref.name, ref.tag))
        except RemoteNotFoundError:
            return None
        return parse_ref_document(data, "tag %s on %s" % (ref, self.url))

    def write_tag(self, ref: ImageRef, manifest_oid: str) -> None:
        self.remote.put(tag_key(ref.name, ref.tag), ref_document(manifest_oid), overwrite=True)

    def delete_tag(self, ref: ImageRef) -> None:
        self.remote.delete(tag_key(ref.name, ref.tag))

    def list_tags(self, name_pattern: str = "*", tag_pattern: str = "*") -> Dict[ImageRef, str]:
        """Tags whose name and tag match the shell-style patterns, with their manifest oids."""
        prefix = "repositories/"
        literal = name_pattern.split("*")[0].split("?")[0].split("[")[0]
        if literal and literal == name_pattern:
            prefix += literal + "/_tags/"
        refs = []
        for info in self.remote.list(prefix):
            ref = tag_from_key(info.key)
            if ref and fnmatch.fnmatchcase(ref.name, name_pattern) and fnmatch.fnmatchcase(ref.tag, tag_pattern):
                refs.append(ref)
        targets = parallel_map(self.read_tag, sorted(refs), READ_JOBS)
        return {ref: oid for ref, oid in zip(sorted(refs), targets) if oid is not None}

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

    def resolve(self, text: str) -> Tuple[Optional[ImageRef], str]:
        """'name:tag' or a unique image-ID prefix -> (tag or None, manifest oid)."""
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
        oid = self.read_tag(ref)
        if oid is None:
            raise ImageReferenceError("%s is not on %s: no such tag (dogestry_tags lists them)" % (ref, self.url))
        return ref, oid
