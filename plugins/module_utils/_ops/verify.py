# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Checking a remote, in the manner of `restic check --read-data`, and repairing what can be.

Reads every manifest (its bytes must hash to its key), every config it names (hash, and the layers
it declares), every image-index entry (it must name a manifest of that very image), every layer blob a
manifest names (its size must be the stored size the manifest gives, and its bytes must decode and
hash to the layer's digest), every manifest kept as pushed (format 2) and every blob it names (its size
must be the manifest's, and its bytes must hash to its digest). Blobs are read in full all of them, or
`sample` of them chosen at random; the others are checked by size. Tags naming a missing or damaged
manifest are reported.

The checks a push makes before it reuses stored layers are reuse.py's (damaged_reused_layers).

Repair moves damaged objects (corrupt blobs and manifests, wrong index entries) aside under
quarantine/<time>/<key>: nothing is deleted, and the next push of an affected image finds the
object absent and stores it again. Missing objects and broken tags cannot be repaired here: push
the image again, or move or remove the tag.

May import _format, _codecs, _storage and _docker.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .._errors import BlobCorruptError, FormatError, RemoteNotFoundError
from .._format.keys import (
    DIGEST_ALGORITHMS, OCI_MANIFESTS_PREFIX, blob_key, image_index_prefix, manifest_key, object_key, oci_manifest_key, parse_digest, sha256_hex, split_digest,
)
from .._format.manifest import LayerEntry, Manifest
from .._format.oci import Descriptor, OciManifest
from .._format.tags import tag_key
from .._storage.repository import READ_JOBS, Repository
from .._transfer import parallel_map
from .reuse import read_verified


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
    oci_manifests: int = 0          # manifests kept as pushed (format 2)
    blobs: int = 0                  # distinct blobs kept as pushed they name (configs and layers counted above apart)
    blobs_read: int = 0             # of which read and hashed in full
    index_entries: int = 0
    tags: int = 0
    bytes_read: int = 0
    problems: List[Problem] = field(default_factory=list)
    moved: Dict[str, str] = field(default_factory=dict)     # key -> where repair moved it

    @property
    def unrepaired(self) -> List[Problem]:
        return [p for p in self.problems if p.key not in self.moved]

    def summary(self) -> str:
        checked = ("%d tags, %d manifests, %d configs, %d index entries, %d layer blobs (%d read in full), %d manifests "
                   "and %d blobs kept as pushed (%d read in full); %d bytes read" % (
                       self.tags, self.manifests, self.configs, self.index_entries, self.layers, self.layers_read,
                       self.oci_manifests, self.blobs, self.blobs_read, self.bytes_read))
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
                        "oci_manifests": self.oci_manifests, "blobs": self.blobs, "blobs_read": self.blobs_read,
                        "bytes_read": self.bytes_read},
            "problems": [p.as_dict() for p in self.problems],
            "moved": dict(sorted(self.moved.items())),
        }


def verify(repo: Repository, sample: Optional[int] = None, repair: bool = False, jobs: int = 4,
           rng: Optional[random.Random] = None) -> VerifyReport:
    """Check the remote; with repair, move damaged objects to quarantine. `sample`: blobs (layers, and blobs
    kept as pushed) read in full."""
    repo.check()
    report = VerifyReport(repo.url)
    manifests = _check_manifests(repo, report)
    _check_configs(repo, manifests, report)
    oci = _check_oci_manifests(repo, report)
    _check_blobs(repo, manifests, oci, report, sample, jobs, rng or random.Random())
    _check_index(repo, manifests, report)
    _check_tags(repo, manifests, oci, report)
    if repair:
        for problem in report.problems:
            if problem.repairable and problem.key not in report.moved:
                report.moved[problem.key] = repo.quarantine(problem.key)
    return report


def _check_manifests(repo: Repository, report: VerifyReport) -> Dict[str, Manifest]:
    """Every dogestry manifest, read and verified against its address: oid -> manifest."""
    oids = []
    for info in repo.remote.list("manifests/sha256/"):
        try:
            oids.append(parse_digest("sha256:" + info.key.rsplit("/", 1)[-1]))
        except FormatError:
            continue        # not a key of this format: prune and verify leave it alone
    report.manifests += len(oids)
    return _read_each(repo.read_manifest, oids, manifest_key, report)


def _read_each(read_one, names: List[str], key_of, report: VerifyReport) -> dict:
    """read_one(name) for each name, in parallel: name -> what was read. A corrupt one is a problem of
    the report; one deleted since the listing is left out."""
    def read(name):
        try:
            return read_one(name)
        except (BlobCorruptError, FormatError) as exc:
            return exc
        except RemoteNotFoundError:
            return None
    found = {}
    for name, read_back in zip(names, parallel_map(read, names, READ_JOBS)):
        if isinstance(read_back, Exception):
            report.problems.append(Problem(key_of(name), "corrupt", str(read_back), True))
        elif read_back is not None:
            found[name] = read_back
    return found


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


def _check_oci_manifests(repo: Repository, report: VerifyReport) -> Dict[str, OciManifest]:
    """Every manifest kept as pushed, read and verified against its digest: digest -> manifest."""
    digests = []
    for info in repo.remote.list(OCI_MANIFESTS_PREFIX):
        parts = info.key.split("/")
        try:
            if len(parts) == 3 and parts[1] in DIGEST_ALGORITHMS:
                digests.append("%s:%s" % split_digest("%s:%s" % (parts[1], parts[2])))
        except FormatError:
            continue        # not a key of this format
    report.oci_manifests += len(digests)
    return _read_each(repo.read_oci_manifest, digests, oci_manifest_key, report)


def _check_blobs(repo: Repository, manifests: Dict[str, Manifest], oci: Dict[str, OciManifest], report: VerifyReport,
                 sample: Optional[int], jobs: int, rng: random.Random) -> None:
    """Layer blobs the dogestry manifests name, and blobs the manifests kept as pushed name: every one stored with
    its size, and `sample` of them (all: None) read and hashed in full. A blob that is both (an uncompressed layer
    pushed as is) is checked as a layer; configs are _check_configs'."""
    layers: Dict[str, LayerEntry] = {}
    for manifest in manifests.values():
        for layer in manifest.layers:
            layers.setdefault(layer.key, layer)
    configs = {m.config_key for m in manifests.values()}
    verbatim: Dict[str, Tuple[Descriptor, str]] = {}
    for digest, manifest in sorted(oci.items()):
        for blob in manifest.required():
            key = object_key(blob.digest)
            if key not in layers and key not in configs:
                verbatim.setdefault(key, (blob, digest))
    found = repo.remote.stat(list(layers) + list(verbatim))
    decoded = _stored_decoded(repo, [d for k, (d, _m) in verbatim.items() if k not in found])
    keys = sorted(set(layers) | set(verbatim))
    read = set(keys) if sample is None else set(rng.sample(keys, min(sample, len(keys))))

    def check(key):
        if key in layers:
            return _check_layer(repo, key, layers[key], found.get(key), key in read)
        return _check_verbatim(repo, key, verbatim[key], found.get(key), key in read, decoded)
    for key, (problem, size) in zip(keys, parallel_map(check, keys, jobs)):
        if key in layers:
            report.layers += 1
            report.layers_read += key in read and key in found
        else:
            report.blobs += 1
            report.blobs_read += key in read and key in found
        report.bytes_read += size
        if problem:
            report.problems.append(problem)


def _stored_decoded(repo: Repository, missing: List[Descriptor]) -> Set[str]:
    """Digests of blobs not stored as pushed that are uncompressed layers stored decoded (lz4, by diff_id)."""
    candidates = {blob_key(parse_digest(d.digest), "lz4"): d.digest for d in missing if d.digest.startswith("sha256:")}
    return {candidates[key] for key in repo.remote.stat(sorted(candidates))} if candidates else set()


def _check_layer(repo: Repository, key: str, layer: LayerEntry, found, read: bool):
    if found is None:
        return Problem(key, "missing", "layer blob %s is missing" % key, False), 0
    if found.size != layer.stored_size:
        return Problem(key, "corrupt", "layer blob %s has %d bytes, its manifests say %d"
                       % (key, found.size, layer.stored_size), True), 0
    if not read:
        return None, 0
    try:
        read_verified(repo, layer, "layer blob %s" % key)
    except BlobCorruptError as exc:
        return Problem(key, "corrupt", str(exc), True), layer.stored_size
    return None, layer.stored_size


def _check_verbatim(repo: Repository, key: str, named: Tuple[Descriptor, str], found, read: bool, decoded: Set[str]):
    blob, manifest = named
    if found is None:
        if blob.digest in decoded:
            return None, 0      # an uncompressed layer a manifest names by its diff_id, stored lz4 (checked as a layer)
        return Problem(key, "missing", "blob %s of manifest %s is missing" % (blob.digest, manifest), False), 0
    if found.size != blob.size:
        return Problem(key, "corrupt", "blob %s has %d bytes, manifest %s says %d"
                       % (key, found.size, manifest, blob.size), True), 0
    if not read:
        return None, 0
    try:
        read_hashed(repo, key, blob.digest, blob.size)
    except BlobCorruptError as exc:
        return Problem(key, "corrupt", str(exc), True), blob.size
    return None, blob.size


def read_hashed(repo: Repository, key: str, digest: str, size: int) -> None:
    """Read a blob kept as pushed whole and hash it; BlobCorruptError if it is not `digest`."""
    algorithm, expected = split_digest(digest)
    hasher = hashlib.new(algorithm)
    with repo.remote.open(key, size) as stored:
        for chunk in iter(lambda: stored.read(1 << 20), b""):
            hasher.update(chunk)
    if hasher.hexdigest() != expected:
        raise BlobCorruptError("blob %s is corrupt: its content hashes to %s:%s" % (key, algorithm, hasher.hexdigest()))


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


def _check_tags(repo: Repository, manifests: Dict[str, Manifest], oci: Dict[str, OciManifest],
                report: VerifyReport) -> None:
    thin = {"sha256:" + sha256_hex(m.oci_bytes()) for m in manifests.values()}   # what an index may name of them
    malformed: Dict = {}
    targets = repo.list_targets(malformed=malformed)
    for ref, why in sorted(malformed.items()):
        report.tags += 1
        report.problems.append(Problem(tag_key(ref.name, ref.tag), "broken", "%s: fix or remove the tag" % why, False))
    for ref, target in sorted(targets.items()):
        report.tags += 1
        if isinstance(target, Descriptor):
            report.problems.extend(_check_oci_tag(ref, target, oci, thin))
        elif target not in manifests:
            report.problems.append(Problem(tag_key(ref.name, ref.tag), "broken",
                                           "tag %s names manifest sha256:%s, which is missing or damaged: push the "
                                           "image again, or move or remove the tag" % (ref, target), False))


def _check_oci_tag(ref, target: Descriptor, oci: Dict[str, OciManifest], thin: Set[str]) -> List[Problem]:
    """Every manifest a tag reaches (kept as pushed, and read whole by _check_oci_manifests, which also
    checked their blobs), or for an index's child an image stored by dogestry_push."""
    problems, todo, seen = [], [target.digest], set()
    while todo:
        digest = todo.pop()
        if digest in seen:
            continue
        seen.add(digest)
        manifest = oci.get(digest)
        if manifest is None:
            if digest != target.digest and digest in thin:
                continue
            problems.append(Problem(oci_manifest_key(digest), "broken", "tag %s needs manifest %s, which is missing or "
                                    "damaged (push it again, or move or remove the tag)" % (ref, digest), False))
            continue
        todo.extend(child.digest for child in manifest.manifests)
    return problems
