# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Tags: what a tag names, and setting, moving or removing one (plan, then execute).

May import _format, _storage and the rest of _ops; no front end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .._errors import BlobCorruptError, FormatError, ImageReferenceError, RemoteNotFoundError
from .._format.manifest import MANIFEST_MEDIA_TYPE
from .._format.oci import Descriptor
from .._format.reference import ImageRef
from .._storage.repository import READ_JOBS, Repository, Target
from .._transfer import parallel_map


# ---- tags -----------------------------------------------------------------------------------

def target_digest(target: Target) -> str:
    """The digest a tag names: a dogestry manifest's, or that of OCI content kept as pushed."""
    return target.digest if isinstance(target, Descriptor) else "sha256:" + target


def describe_tags(repo: Repository, tags: Dict[ImageRef, Target],
                  malformed: Optional[Dict[ImageRef, str]] = None) -> Tuple[Dict[str, Dict], Dict[str, str]]:
    """(described tags, broken tags): a tag whose manifest is missing or damaged, or whose own content is
    malformed (`malformed`, from Repository.list_targets), is reported, not fatal.
    A tag naming OCI content pushed through the registry API is described by its decoded image, if any."""
    def read(target):
        try:
            oid = repo.image_for(target) if isinstance(target, Descriptor) else target
            return oid, repo.read_manifest(oid)
        except ImageReferenceError:
            return None, None       # an artifact, or an index without a linux/amd64 image
        except (RemoteNotFoundError, BlobCorruptError, FormatError) as exc:
            return None, exc
    unique = sorted(set(tags.values()), key=str)
    manifests = dict(zip(unique, parallel_map(read, unique, READ_JOBS)))
    described = {}
    broken = {str(ref): "malformed tag: %s" % why for ref, why in sorted((malformed or {}).items())}
    for ref, target in sorted(tags.items()):
        oid, manifest = manifests[target]
        digest = target_digest(target)
        if isinstance(manifest, Exception):
            broken[str(ref)] = "manifest %s: %s" % (digest, manifest)
            continue
        entry = described[str(ref)] = {
            "manifest": digest, "media_type": target.media_type if isinstance(target, Descriptor) else MANIFEST_MEDIA_TYPE}
        if manifest is not None:
            entry.update(image_id=manifest.image_id, layers=len(manifest.layers),
                         size=sum(layer.size for layer in manifest.layers),
                         stored_size=sum(layer.stored_size for layer in manifest.layers) + manifest.config_size)
    return described, broken


@dataclass
class TagChange:
    """What a tag operation does. Targets are copied as stored: a tag naming OCI content (an index, an
    artifact, a signed image) is copied as that same descriptor, so its digest and signatures stay valid."""
    ref: ImageRef
    before: Optional[Target]        # what the tag names now (None: no such tag, or `malformed`)
    after: Optional[Target]         # what it will name; None removes the tag
    malformed: Optional[str] = None     # why the tag's current content is no tag document

    @property
    def reason(self) -> Optional[str]:
        if self.before == self.after and self.malformed is None:
            return None
        was = (" (was %s)" % target_digest(self.before)[:19] if self.before is not None
               else " (was malformed: %s)" % self.malformed if self.malformed else "")
        if self.after is None:
            return "%s would be removed%s" % (self.ref, was)
        return "%s would point at manifest %s%s" % (self.ref, target_digest(self.after)[:19], was)


def plan_tag(repo: Repository, ref: ImageRef, source: Optional[str]) -> TagChange:
    """Point `ref` at what `source` names (a tag, copied as stored, or an ID prefix), or remove it (source None)."""
    repo.check()
    try:
        before, malformed = repo.read_target(ref), None
    except FormatError as exc:
        before, malformed = None, str(exc)     # a tag that cannot be read can still be replaced or removed
    after = repo.resolve_target(source)[1] if source is not None else None
    # never tag what cannot be read back (each read verifies the manifest against its digest)
    if isinstance(after, Descriptor):
        repo.read_oci_manifest(after.digest)
    elif after is not None:
        repo.read_manifest(after)
    return TagChange(ref, before, after, malformed)


def execute_tag(repo: Repository, change: TagChange) -> None:
    if change.reason is None:
        return
    if change.after is None:
        repo.delete_tag(change.ref)
    elif isinstance(change.after, Descriptor):
        repo.hold_oci_content()     # a no-op on the version-2 remote such content comes from
        repo.write_oci_tag(change.ref, change.after)
    else:
        repo.write_tag(change.ref, change.after)
