# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Checking a remote, in the manner of `restic check --read-data`, and repairing what can be.

Reads every manifest (its bytes must hash to its key), every config it names (hash, and the layers
it declares), every image-index entry (it must name a manifest of that very image) and every
layer blob a manifest names: its size must be the stored size the manifest gives, and its bytes
must decode and hash to the layer's digest (all of them, or `sample` of them chosen at random; the
others are checked by size). Tags naming a missing or damaged manifest are reported.

The checks a push makes before it reuses stored layers live here too (damaged_reused_layers).

Repair moves damaged objects (corrupt blobs and manifests, wrong index entries) aside under
quarantine/<time>/<key>: nothing is deleted, and the next push of an affected image finds the
object absent and stores it again. Missing objects and broken tags cannot be repaired here: push
the image again, or move or remove the tag.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ._compress import LZ4_ENDS, lz4_frame_ends_intact
from ._docker_archive import LoadLayer, verified_chunks
from ._errors import BlobCorruptError, FormatError, RemoteNotFoundError
from ._format import (
    QUARANTINE_PREFIX, Descriptor, LayerEntry, Manifest, blob_key, image_index_prefix, manifest_key, object_key,
    oci_manifest_key, parse_digest, tag_key,
)
from ._repository import READ_JOBS, Repository
from ._transfer import parallel_map


@dataclass
class Problem:
    key: str
    kind: str           # missing, corrupt, wrong (an index entry naming another image), broken (a tag)
    detail: str
    repairable: bool

    def as_dict(self) -> Dict:
        return {"key": self.key, "kind": self.kind, "detail": self.detail, "repairable": self.repairable}


@dataclass
class VerifyReport:
    url: str
    manifests: int = 0
    configs: int = 0
    layers: int = 0                 # distinct layer blobs checked
    layers_read: int = 0            # of which read and hashed in full
    index_entries: int = 0
    tags: int = 0
    bytes_read: int = 0
    problems: List[Problem] = field(default_factory=list)
    moved: Dict[str, str] = field(default_factory=dict)     # key -> where repair moved it

    @property
    def unrepaired(self) -> List[Problem]:
        return [p for p in self.problems if p.key not in self.moved]

    def summary(self) -> str:
        checked = "%d tags, %d manifests, %d configs, %d index entries, %d layer blobs (%d read in full, %d bytes)" % (
            self.tags, self.manifests, self.configs, self.index_entries, self.layers, self.layers_read,
            self.bytes_read)
        if not self.problems:
            return "%s is consistent: checked %s" % (self.url, checked)
        return "%s: %d problem(s)%s: %s; checked %s" % (
            self.url, len(self.problems), ", %d moved to quarantine" % len(self.moved) if self.moved else "",
            "; ".join("%s %s" % (p.kind, p.key) for p in self.problems[:5]) + (" ..." if len(self.problems) > 5 else ""),
            checked)

    def result(self) -> Dict:
        return {
            "checked": {"tags": self.tags, "manifests": self.manifests, "configs": self.configs,
                        "index_entries": self.index_entries, "layers": self.layers, "layers_read": self.layers_read,
                        "bytes_read": self.bytes_read},
            "problems": [p.as_dict() for p in self.problems],
            "moved": dict(sorted(self.moved.items())),
        }


def verify(repo: Repository, sample: Optional[int] = None, repair: bool = False, jobs: int = 4,
           rng: Optional[random.Random] = None) -> VerifyReport:
    """Check the remote; with repair, move damaged objects to quarantine. `sample`: layer blobs read in full."""
    repo.check()
    report = VerifyReport(repo.url)
    manifests = _check_manifests(repo, report)
    _check_configs(repo, manifests, report)
    _check_layers(repo, manifests, report, sample, jobs, rng or random.Random())
    _check_index(repo, manifests, report)
    _check_tags(repo, manifests, report)
    if repair:
        for problem in report.problems:
            if problem.repairable and problem.key not in report.moved:
                report.moved[problem.key] = quarantine(repo, problem.key)
    return report


def _check_manifests(repo: Repository, report: VerifyReport) -> Dict[str, Manifest]:
    oids = []
    for info in repo.remote.list("manifests/sha256/"):
        try:
            oids.append(parse_digest("sha256:" + info.key.rsplit("/", 1)[-1]))
        except FormatError:
            continue        # not a key of this format: prune and verify leave it alone

    def read(oid):
        try:
            return repo.read_manifest(oid)
        except (BlobCorruptError, FormatError) as exc:
            return exc
        except RemoteNotFoundError:
            return None     # deleted since the listing
    manifests = {}
    for oid, manifest in zip(oids, parallel_map(read, oids, READ_JOBS)):
        report.manifests += 1
        if isinstance(manifest, Exception):
            report.problems.append(Problem(manifest_key(oid), "corrupt", str(manifest), True))
        elif manifest is not None:
            manifests[oid] = manifest
    return manifests


def _check_configs(repo: Repository, manifests: Dict[str, Manifest], report: VerifyReport) -> None:
    by_config = {m.config_oid: m for m in manifests.values()}

    def read(manifest):
        try:
            repo.read_config(manifest)
            return None
        except RemoteNotFoundError as exc:
            return Problem(manifest.config_key, "missing", str(exc), False)
        except (BlobCorruptError, FormatError) as exc:
            return Problem(manifest.config_key, "corrupt", str(exc), True)
    for problem in parallel_map(read, list(by_config.values()), READ_JOBS):
        report.configs += 1
        if problem:
            report.problems.append(problem)


def _check_layers(repo: Repository, manifests: Dict[str, Manifest], report: VerifyReport, sample: Optional[int],
                  jobs: int, rng: random.Random) -> None:
    layers: Dict[str, LayerEntry] = {}
    for manifest in manifests.values():
        for layer in manifest.layers:
            layers.setdefault(layer.key, layer)
    found = repo.remote.stat(list(layers))
    keys = sorted(layers)
    read = set(keys) if sample is None else set(rng.sample(keys, min(sample, len(keys))))

    def check(key):
        layer = layers[key]
        if key not in found:
            return Problem(key, "missing", "layer blob %s is missing" % key, False), 0
        if found[key].size != layer.stored_size:
            return Problem(key, "corrupt", "layer blob %s has %d bytes, its manifests say %d"
                           % (key, found[key].size, layer.stored_size), True), 0
        if key not in read:
            return None, 0
        try:
            read_verified(repo, layer, "layer blob %s" % key)
        except BlobCorruptError as exc:
            return Problem(key, "corrupt", str(exc), True), layer.stored_size
        return None, layer.stored_size
    for key, (problem, size) in zip(keys, parallel_map(check, keys, jobs)):
        report.layers += 1
        report.layers_read += key in read and key in found
        report.bytes_read += size
        if problem:
            report.problems.append(problem)


def _check_index(repo: Repository, manifests: Dict[str, Manifest], report: VerifyReport) -> None:
    prefix = image_index_prefix()
    configs = []
    for info in repo.remote.list(prefix):
        try:
            configs.append(parse_digest("sha256:" + info.key[len(prefix):]))
        except FormatError:
            continue

    def check(config_oid):
        key = prefix + config_oid
        try:
            entry = repo.index_entry(config_oid)
        except FormatError as exc:
            return Problem(key, "corrupt", str(exc), True)
        if entry is None:
            return None
        manifest = manifests.get(entry)
        if manifest is None:
            return Problem(key, "wrong", "image index entry %s names manifest sha256:%s, which is missing or damaged"
                           % (key, entry), True)
        if manifest.config_oid != config_oid:
            return Problem(key, "wrong", "image index entry %s names manifest sha256:%s of another image (sha256:%s)"
                           % (key, entry, manifest.config_oid), True)
        return None
    for problem in parallel_map(check, configs, READ_JOBS):
        report.index_entries += 1
        if problem:
            report.problems.append(problem)


def _check_tags(repo: Repository, manifests: Dict[str, Manifest], report: VerifyReport) -> None:
    malformed: Dict = {}
    targets = repo.list_targets(malformed=malformed)
    for ref, why in sorted(malformed.items()):
        report.tags += 1
        report.problems.append(Problem(tag_key(ref.name, ref.tag), "broken", "%s: fix or remove the tag" % why, False))
    for ref, target in sorted(targets.items()):
        report.tags += 1
        if isinstance(target, Descriptor):
            report.problems.extend(_check_oci(repo, ref, target))
        elif target not in manifests:
            report.problems.append(Problem(tag_key(ref.name, ref.tag), "broken",
                                           "tag %s names manifest sha256:%s, which is missing or damaged: push the "
                                           "image again, or move or remove the tag" % (ref, target), False))


def _check_oci(repo: Repository, ref, target: Descriptor) -> List[Problem]:
    """OCI content a tag names (kept as pushed): every manifest readable and verified, every blob it needs
    stored with its size. The decoded twin of an image is checked with the other dogestry manifests."""
    problems, todo, seen = [], [target.digest], set()
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            manifest = repo.read_oci_manifest(digest)
        except (RemoteNotFoundError, BlobCorruptError, FormatError) as exc:
            problems.append(Problem(oci_manifest_key(digest), "broken", "tag %s needs manifest %s: %s (push it again, "
                                    "or move or remove the tag)" % (ref, digest, exc), False))
            continue
        todo.extend(child.digest for child in manifest.manifests)
        wanted = {object_key(blob.digest): blob for blob in manifest.required()}
        found = repo.remote.stat(sorted(wanted)) if wanted else {}
        for key, blob in sorted(wanted.items()):
            decoded = blob.digest.startswith("sha256:") and blob_key(parse_digest(blob.digest), "lz4")
            if key in found and found[key].size == blob.size:
                continue
            if key not in found and decoded and decoded in repo.remote.stat([decoded]):
                continue        # an uncompressed layer a manifest names by its diff_id, stored lz4
            problems.append(Problem(key, "missing", "blob %s of %s (tag %s) is %s" % (
                blob.digest, digest, ref, "missing" if key not in found else "%d bytes, not %d"
                % (found[key].size, blob.size)), False))
    return problems


# ---- checks a push makes before it reuses stored layers --------------------------------------

LZ4_WORST_RATIO = 255           # an lz4 frame cannot shrink data by more than about this factor
SMALL_REUSE = 1 << 20           # reused blobs up to this stored size are read and verified whole


def damaged_reused_layers(repo: Repository, present: Dict[str, LayerEntry], sizes: Dict[str, int]) -> List[str]:
    """Of the stored layers a push would reuse (`present`, by oid), those whose stored copy cannot be
    that layer, now that `docker save` gave the layers' sizes.

    A raw blob must have the layer's exact size; an lz4 one a size an lz4 frame of it can have, and
    the two ends of a whole frame (a truncated copy has a plausible size); small ones are read and
    verified whole (cheap, and a few bytes of junk can look plausible).
    """
    damaged = []
    for oid, entry in sorted(present.items()):
        size, stored = sizes[oid], entry.stored_size
        if entry.encoding == "none":
            ok = stored == size
        else:
            ok = size // LZ4_WORST_RATIO <= stored <= size + size // LZ4_WORST_RATIO + 64 + 4 * (size >> 22)
        if ok and stored <= SMALL_REUSE:
            ok = _verifies(repo, LayerEntry(oid, size, entry.encoding, stored))
        elif ok and entry.encoding == "lz4":
            ok = _lz4_ends_intact(repo, entry.key, stored)
        if not ok:
            damaged.append(oid)
    return damaged


def read_verified(repo: Repository, layer: LayerEntry, what: str) -> None:
    """Read a stored layer whole, decoding and hashing it; BlobCorruptError on any mismatch."""
    with repo.remote.open(layer.key, layer.stored_size) as stored:
        for _chunk in verified_chunks(stored, LoadLayer(layer.oid, layer.size, layer.encoding, None, what)):
            pass


def _verifies(repo: Repository, layer: LayerEntry) -> bool:
    try:
        read_verified(repo, layer, layer.key)
        return True
    except (BlobCorruptError, RemoteNotFoundError):
        return False


def _lz4_ends_intact(repo: Repository, key: str, stored_size: int) -> bool:
    try:
        return lz4_frame_ends_intact(repo.remote.get_range(key, 0, LZ4_ENDS - 1),
                                     repo.remote.get_range(key, stored_size - LZ4_ENDS, stored_size - 1))
    except (BlobCorruptError, RemoteNotFoundError):
        return False


def quarantine(repo: Repository, key: str) -> str:
    """Move a damaged object aside, so that the next push stores it anew; returns where it went."""
    target = "%s%s/%s" % (QUARANTINE_PREFIX, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), key)
    repo.remote.move(key, target)
    return target
