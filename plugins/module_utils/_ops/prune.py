# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Pruning: delete what no tag, live ticket or push in flight references. Tags are never deleted here.

Referenced ("live") objects are found from the roots — every tag's manifest, every unexpired
ticket's manifest, every unexpired lease, whatever the grace period — by following manifest -> config
and layer blobs (every stored encoding) and config -> image-index entry -> the manifest it names
(so an ID lookup or a push that reuses that manifest never finds it gone).  OCI content kept as
pushed (format 2) is followed too: index -> manifests -> config and layer blobs, an image manifest ->
the dogestry manifest of its decoded twin, and every live manifest -> the manifests whose subject it
is (signatures and attestations go with their image).  Everything else under blobs/, manifests/,
oci-manifests/, referrers/ and images/ is garbage once it is older than the grace period; younger
garbage is spared because a push in flight writes its blobs before its tag.  Expired tickets
and stale leases go too.  Keys this version does not understand are left alone.

Pushes that *reuse* old, unreferenced blobs are protected by leases and a prune marker:

* a push writes ``leases/<uuid>.json`` naming the oids it will reference (`push_lease`), then
  waits while a prune marker is live, then checks that the objects its plan found are still
  there (a prune that finished in between is caught here: "run the push again");
* prune writes ``leases/prune-<uuid>.json`` first, then re-reads tags, tickets and leases right
  before deleting, and deletes image-index entries, manifests, then blobs (reverse write order),
  in batches (S3: DeleteObjects, 1000 keys a request).  A timer rewrites the marker every
  MARKER_REFRESH seconds until prune is done, and deleting stops if it could not for MARKER_TTL / 2.

Either prune reads the lease (and spares its oids), or the lease was written after prune's
marker, so the push sees the marker and waits it out before checking.  Markers not rewritten for
MARKER_TTL (a crashed prune) are ignored and later pruned.  A marker's age is judged by the store's
clock alone (the pusher's lease, just written, tells the store's time), so a pusher whose clock
disagrees with the store's is not fooled either way.

May import _format, _storage and _ops.leases.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from .._errors import BlobCorruptError, DogestryError, FormatError, RemoteNotFoundError
from .._format.keys import (
    DIGEST_ALGORITHMS, ENCODINGS, OCI_MANIFESTS_PREFIX, REFERRERS_PREFIX, image_index_prefix, parse_digest, referrers_prefix, sha256_hex, split_digest,
)
from .._storage.base import ObjectInfo
from .._storage.repository import READ_JOBS, Repository
from .._storage.ticket import TICKETS_PREFIX, ticket_expiry_from_key
from .._transfer import parallel_map
from .leases import LEASES_PREFIX, MARKER_PREFIX, MARKER_TTL, _Marker, _json, _lease, _lease_expiry


DELETE_BATCH = 1000         # keys per Remote.delete_many call (S3's DeleteObjects limit)
MIN_GRACE_SECONDS = 60      # young garbage is judged by the store's clock: spare a minute of skew at least


# dogestry_prune's grace_period and `dogestry prune --grace-period`, both: a week to undo a tag removed by mistake
# (its image is still there; tag it again) before prune takes the data.
DEFAULT_GRACE_PERIOD = "7d"
DELETE_ORDER = ("image_index", "referrers", "oci_manifests", "manifests", "blobs", "tickets", "leases")
JOBS = 8


def parse_duration(text) -> int:
    """'3600', '90m', '24h', '7d' -> seconds; anything else is a one-line DogestryError."""
    match = re.match(r"^\s*(\d+)\s*([smhd]?)\s*$", str(text))
    if not match:
        raise DogestryError("%r is not a duration like 3600, 90m, 24h or 7d" % (text,))
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# ---- what is referenced ---------------------------------------------------------------------

@dataclass
class Live:
    manifests: Set[str] = field(default_factory=set)
    configs: Set[str] = field(default_factory=set)
    blobs: Set[str] = field(default_factory=set)       # sha256 hex, or "sha512:<hex>"
    oci: Set[str] = field(default_factory=set)         # digests of OCI manifests kept as pushed
    tickets: int = 0
    leases: int = 0


def _referenced(repo: Repository, now: float, grace: float) -> Live:
    remote = repo.remote
    live = Live()
    malformed: Dict = {}
    targets = repo.list_targets(malformed=malformed).values()
    if malformed:
        # Its content names nothing we can read, so any stored image may be what it was meant to keep:
        # deleting around it could destroy the only copy; nothing is deleted until someone decides.
        (_ref, why), more = sorted(malformed.items())[0], len(malformed) - 1
        raise FormatError("prune refused: %s%s; a malformed tag could name any stored image, so prune deletes nothing "
                          "while one is there: fix it, or remove it (dogestry_tag state=absent), then prune again"
                          % (why, " (and %d more malformed tag%s)" % (more, "s" if more > 1 else "") if more else ""))
    roots = {target for target in targets if isinstance(target, str)}
    roots |= _oci_referenced(repo, [target.digest for target in targets if not isinstance(target, str)], live)
    for info in remote.list(TICKETS_PREFIX):
        expiry = ticket_expiry_from_key(info.key)
        if expiry is not None and expiry >= now:
            live.tickets += 1
            roots.add(parse_digest(_json(repo, info.key)["manifest"]))
    # An image dogestry_push stored is served (and signed) as Manifest.oci_bytes(): keep its signatures too.
    _oci_referenced(repo, ["sha256:" + sha256_hex(manifest.oci_bytes())
                           for manifest in repo.read_manifests(roots, missing_ok=True).values()], live)
    leased_digests = []
    for info in remote.list(LEASES_PREFIX):
        if not info.key.startswith(MARKER_PREFIX) and _lease_expiry(info) >= now:
            live.leases += 1
            oids, digests = _lease(repo, info.key)
            live.manifests |= oids
            live.configs |= oids
            live.blobs |= oids
            live.blobs.update(_blob_id(digest) for digest in digests)
            leased_digests.extend(digests)
    roots |= _oci_referenced(repo, leased_digests, live)       # a manifest being put, and what it names
    # Leased oids may name a manifest the push reuses: read those too (absent ones are skipped).
    todo, followed = roots | live.manifests, set()
    while todo:
        batch = sorted(todo)
        live.manifests |= todo
        configs = set()
        # A leased manifest may not be written yet; a tag's missing manifest fails pulls, not prune.
        for manifest in repo.read_manifests(batch, missing_ok=True).values():
            configs.add(manifest.config_oid)
            live.blobs.add(manifest.config_oid)
            live.blobs.update(layer.oid for layer in manifest.layers)
        live.configs |= configs
        configs = sorted(configs - followed)
        followed.update(configs)
        # The image index of a live config names the manifest ID lookups and pushes reuse: keep it too.
        todo = {target for target in parallel_map(repo.manifest_for_image, configs, READ_JOBS)
                if target and target not in live.manifests}
    return live


def _oci_referenced(repo: Repository, digests: List[str], live: Live) -> Set[str]:
    """Mark OCI content reachable from `digests` live; returns the dogestry manifests of decoded twins."""
    twins: Set[str] = set()
    todo = list(digests)
    while todo:
        digest = todo.pop()
        if digest in live.oci:
            continue
        live.oci.add(digest)
        for info in repo.remote.list(referrers_prefix(digest)):     # signatures, attestations, SBOMs
            todo.append(info.key.rpartition("/")[2].replace("-", ":", 1))
        try:
            manifest = repo.read_oci_manifest(digest)
        except (RemoteNotFoundError, BlobCorruptError, FormatError):
            continue        # a tag's missing manifest fails pulls, not prune
        for blob in manifest.required():
            live.blobs.add(_blob_id(blob.digest))
        todo.extend(child.digest for child in manifest.manifests)
        if manifest.is_image and manifest.config.digest.startswith("sha256:"):
            twin = repo.manifest_for_image(parse_digest(manifest.config.digest))
            if twin:
                twins.add(twin)
    return twins


def _blob_id(digest: str) -> str:
    """How Live.blobs and _category name a blob: the hex of sha256 (every encoding), else the digest."""
    algorithm, hexdigest = split_digest(digest)
    return hexdigest if algorithm == "sha256" else digest


def _category(key: str) -> Optional[tuple]:
    """key -> (category, oid or None); None for keys prune never touches."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "blobs" and parts[1] in DIGEST_ALGORITHMS:
        name = parts[3]
        for suffix in ENCODINGS.values():
            if suffix and name.endswith(suffix) and parts[1] == "sha256":
                name = name[:-len(suffix)]
        if len(name) != DIGEST_ALGORITHMS[parts[1]] or parts[2] != name[:2]:
            return None
        return "blobs", _blob_id("%s:%s" % (parts[1], name))
    if len(parts) == 3 and key.startswith(OCI_MANIFESTS_PREFIX) and parts[1] in DIGEST_ALGORITHMS:
        return "oci_manifests", "%s:%s" % (parts[1], parts[2])
    if len(parts) == 4 and key.startswith(REFERRERS_PREFIX) and parts[1] in DIGEST_ALGORITHMS:
        return "referrers", parts[3].replace("-", ":", 1)     # kept while the referring manifest is
    if len(parts) == 3 and parts[:2] == ["manifests", "sha256"] and len(parts[2]) == 64:
        return "manifests", parts[2]
    if len(parts) == 3 and parts[:2] == ["images", "sha256"] and len(parts[2]) == 64:
        return "image_index", parts[2]
    return None


def _is_live(category: str, oid: str, live: Live) -> bool:
    return oid in {"blobs": live.blobs, "manifests": live.manifests, "image_index": live.configs,
                   "oci_manifests": live.oci, "referrers": live.oci}[category]


# ---- plan and execute -----------------------------------------------------------------------

@dataclass
class PrunePlan:
    url: str
    grace_seconds: float
    now: float
    garbage: Dict[str, List[ObjectInfo]]        # category -> objects that would be deleted
    spared_young: List[ObjectInfo]              # unreferenced but younger than the grace period
    live: Live

    @property
    def count(self) -> int:
        return sum(len(objs) for objs in self.garbage.values())

    @property
    def bytes(self) -> int:
        return sum(info.size for objs in self.garbage.values() for info in objs)

    @property
    def reason(self) -> Optional[str]:
        if not self.count:
            return None
        what = ", ".join("%d %s" % (len(self.garbage[c]), c.replace("_", " ")) for c in DELETE_ORDER if self.garbage[c])
        return "%d unreferenced objects (%d bytes) would be deleted from %s: %s" % (self.count, self.bytes, self.url, what)

    def result(self) -> Dict:
        return {
            "changed": self.reason is not None,
            "reason": self.reason,
            "count": self.count,
            "bytes": self.bytes,
            "deleted": {c: sorted(info.key for info in self.garbage[c]) for c in DELETE_ORDER},
            "spared_young": len(self.spared_young),
            "grace_seconds": self.grace_seconds,
        }


def plan_prune(repo: Repository, grace_seconds: float, now: Optional[float] = None) -> PrunePlan:
    """What a prune would delete. Reads tags, tickets, leases and manifests; writes nothing."""
    if grace_seconds < MIN_GRACE_SECONDS:
        raise DogestryError("a grace period of %ds is too short: at least %ds (a minute absorbs clock skew between "
                            "this host and the remote; pushes in flight are protected by their leases)"
                            % (grace_seconds, MIN_GRACE_SECONDS))
    repo.check()
    now = time.time() if now is None else now
    live = _referenced(repo, now, grace_seconds)
    garbage: Dict[str, List[ObjectInfo]] = {c: [] for c in DELETE_ORDER}
    young = []
    for prefix in ("blobs/", "manifests/", image_index_prefix(), OCI_MANIFESTS_PREFIX, REFERRERS_PREFIX):
        for info in repo.remote.list(prefix):
            kind = _category(info.key)
            if kind is None or _is_live(kind[0], kind[1], live):
                continue
            (garbage[kind[0]] if info.modified < now - grace_seconds else young).append(info)
    for info in repo.remote.list(TICKETS_PREFIX):
        expiry = ticket_expiry_from_key(info.key)
        if expiry is not None and expiry < now:
            garbage["tickets"].append(info)
    for info in repo.remote.list(LEASES_PREFIX):
        expiry = info.modified + MARKER_TTL if info.key.startswith(MARKER_PREFIX) else _lease_expiry(info)
        if expiry < now - grace_seconds:
            garbage["leases"].append(info)
    return PrunePlan(repo.url, grace_seconds, now, garbage, young, live)


def execute_prune(repo: Repository, plan: PrunePlan, jobs: int = JOBS) -> Dict:
    """Delete the plan's garbage that is still garbage: tags, tickets and leases are re-read first."""
    result = plan.result()
    if not plan.count:
        result.update(deleted_count=0, deleted_bytes=0, kept=[])
        return result
    deleted: Dict[str, List[ObjectInfo]] = {c: [] for c in DELETE_ORDER}
    kept: List[str] = []
    with _Marker(repo) as marker:
        live = _referenced(repo, time.time(), plan.grace_seconds)

        def delete(batch: List[ObjectInfo]) -> None:
            marker.check()
            repo.remote.delete_many([info.key for info in batch])
        for category in DELETE_ORDER:
            doomed = []
            for info in plan.garbage[category]:
                kind = _category(info.key)
                if kind is not None and _is_live(kind[0], kind[1], live):
                    kept.append(info.key)
                else:
                    doomed.append(info)
            parallel_map(delete, [doomed[i:i + DELETE_BATCH] for i in range(0, len(doomed), DELETE_BATCH)], jobs)
            deleted[category] = doomed
    result.update(
        deleted={c: sorted(info.key for info in deleted[c]) for c in DELETE_ORDER},
        deleted_count=sum(len(v) for v in deleted.values()),
        deleted_bytes=sum(info.size for v in deleted.values() for info in v),
        kept=sorted(kept))
    result["changed"] = result["deleted_count"] > 0
    return result
