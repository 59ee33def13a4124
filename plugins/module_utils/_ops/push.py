# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Push: docker image inspect -> remote stat -> (only if something is missing) docker save ->
hash/encode/spool each missing layer -> upload in parallel -> config -> manifest -> tag.

On Docker's containerd image store, when the daemon shares our loopback, Docker's own push to the
engine's loopback endpoint (_ops/loopback) replaces `docker save`; what is stored, and in which order,
is the same. Every plan has a `reason`: what a real run would change, or None.

May import _format, _codecs, _storage, _docker and the rest of _ops; no front end.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .._docker.daemon import Daemon, image_layers
from .._docker.save import SavedImage, read_save_stream
from .._errors import BlobCorruptError, DockerError, FormatError, ImageReferenceError, RemoteError, RemoteMissingError, RemoteNotFoundError
from .._format.keys import ENCODINGS, blob_key, parse_digest, sha256_hex
from .._format.manifest import LayerEntry, Manifest
from .._format.oci import IMAGE_MANIFEST_MEDIA_TYPES
from .._format.reference import ImageRef, looks_like_id_prefix, parse_image_ref
from .._storage.base import temp_dir_for
from .._storage.repository import Repository
from .._transfer import TransferPool
from .common import _EndpointUnreachable, _drop_stale_names, _serves_daemon, _unique
from .leases import drop_lease, push_lease
from .loopback import ENGINE_NAME, LoopbackServer, only_under, private_tag
from .loopback_push import PushReceiver
from .reuse import damaged_reused_layers


# ---- push -----------------------------------------------------------------------------------

@dataclass
class PushPlan:
    source: str
    ref: ImageRef
    image_id: Optional[str]             # sha256:<config>; None until docker save tells (containerd store)
    diff_ids: List[str]
    current: Optional[str]              # manifest the remote tag points at now
    existing: Optional[str]             # a complete manifest of this image already on the remote
    daemon_id: str = ""                 # the daemon's image ID (config digest, or manifest digest on containerd)
    containerd: bool = False
    present: Dict[str, LayerEntry] = field(default_factory=dict)   # layers already stored (size unknown: 0)
    missing: List[str] = field(default_factory=list)               # layer oids to upload
    config_missing: bool = False
    up_to_date: bool = False
    current_image_id: Optional[str] = None     # image the remote tag points at now
    same_as: Optional[ImageRef] = None         # an earlier plan of this run stores the image: tag only
    via_daemon: bool = False                   # Docker pushes it into the engine's loopback endpoint

    @property
    def config_oid(self) -> Optional[str]:
        return parse_digest(self.image_id) if self.image_id else None

    @property
    def reason(self) -> Optional[str]:
        return self.describe(done=False)

    def describe(self, done: bool) -> Optional[str]:
        """What a real run would change (done=False), or what it changed (done=True); None for nothing."""
        if self.up_to_date:
            return None
        if self.same_as:
            return "%s: tag %s to the image pushed as %s" % (self.ref, "set" if done else "would be set", self.same_as)
        if self.existing:
            verb = ("set" if done else "would be set") if not self.current else ("moved" if done else "would move")
            return "%s: tag %s -> %s (image already stored)" % (self.ref, verb, self.image_id[:19])
        layers = len(_unique(self.diff_ids))
        return "%s: %d of %d layers%s %s" % (
            self.ref, len(self.missing), layers, " and the config" if self.config_missing else "",
            "uploaded" if done else "missing on the remote")

    def result(self) -> Dict:
        return {
            "image": str(self.ref),
            "source": self.source,
            "image_id": self.image_id,
            "daemon_image_id": self.daemon_id,
            "changed": self.reason is not None,
            "reason": self.reason,
            "layers_transferred": ["sha256:" + oid for oid in self.missing],
            "layers_skipped": ["sha256:" + oid for oid in _unique(self.diff_ids) if oid not in self.missing],
        }


def plan_pushes(daemon: Daemon, repo: Repository, sources: List[str]) -> List[PushPlan]:
    """Plans for several images; a second tag of an image an earlier plan uploads only writes its tag."""
    plans: List[PushPlan] = []
    uploading: Dict[str, PushPlan] = {}
    for source in sources:
        plan = plan_push(daemon, repo, source)
        earlier = uploading.get(plan.daemon_id)
        if earlier is not None and not plan.up_to_date and not plan.existing:
            plan.same_as, plan.missing, plan.config_missing = earlier.ref, [], False
        elif not plan.up_to_date and not plan.existing:
            uploading[plan.daemon_id] = plan
        plans.append(plan)
    return plans


def plan_push(daemon: Daemon, repo: Repository, source: str) -> PushPlan:
    if source.strip().startswith("sha256:"):
        raise ImageReferenceError("%s is an image ID: push by name:tag (the remote tag is named after it); "
                                  "tag the image first (docker tag ID name:tag)" % source)
    ref = parse_image_ref(source)
    info = daemon.inspect(source)
    if info is None:
        raise ImageReferenceError("image %s not found in the Docker daemon at %s" % (source, daemon.host))
    if looks_like_id_prefix(source) and info["Id"].startswith("sha256:" + source) \
            and str(ref) not in (info.get("RepoTags") or []):
        raise ImageReferenceError("%s is an image ID prefix, not a name: push by name:tag (docker tag %s name:tag)"
                                  % (source, source))
    plan = PushPlan(source, ref, info["Id"], image_layers(info), None, None, info["Id"], daemon.containerd_store)
    plan.via_daemon = plan.containerd and _serves_daemon(daemon) and \
        (info.get("Descriptor") or {}).get("mediaType") in IMAGE_MANIFEST_MEDIA_TYPES      # an index: docker save
    found = {}
    if _remote_exists(repo):
        plan.current = repo.read_tag(ref)
        if plan.containerd:
            plan.image_id = _config_on_containerd(repo, plan)
        if plan.image_id is None:
            plan.config_missing = True      # unknown until docker save: plan every layer the remote lacks
            found = repo.remote.stat([blob_key(oid, enc) for oid in _unique(plan.diff_ids) for enc in ENCODINGS])
            return _plan_layers(plan, found)
        plan.existing = repo.manifest_for_image(plan.config_oid)
        if plan.current:
            plan.current_image_id = (plan.image_id if plan.current == plan.existing
                                     else repo.read_manifest(plan.current).image_id)
            if plan.current_image_id == plan.image_id and _stored_whole(repo, plan.current):
                plan.up_to_date = True
                return plan
        if plan.existing and _stored_whole(repo, plan.existing):
            return plan
        plan.existing = None    # its blobs are missing or damaged: push the image again
        found = repo.remote.stat([blob_key(plan.config_oid)] +
                                 [blob_key(oid, enc) for oid in _unique(plan.diff_ids) for enc in ENCODINGS])
    elif plan.containerd:
        plan.image_id = None
    plan.config_missing = plan.image_id is None or blob_key(plan.config_oid) not in found
    return _plan_layers(plan, found)


def _plan_layers(plan: PushPlan, found) -> PushPlan:
    for oid in _unique(plan.diff_ids):
        stored = [LayerEntry(oid, 0, enc, found[blob_key(oid, enc)].size)
                  for enc in ENCODINGS if blob_key(oid, enc) in found]
        if stored:
            plan.present[oid] = stored[0]
        else:
            plan.missing.append(oid)
    return plan


def _config_on_containerd(repo: Repository, plan: PushPlan) -> Optional[str]:
    """The config digest of an image in the containerd store, when the remote can tell without a
    `docker save` (the daemon only gives its manifest digest): the tag's manifest, when the daemon's
    image is that manifest as dogestry loads it; else what an earlier push from a containerd store
    recorded under sources/, checked to have the daemon's layers. None: unknown until saved."""
    if plan.current:
        manifest = repo.read_manifest(plan.current)
        if "sha256:" + sha256_hex(manifest.oci_bytes()) == plan.daemon_id:
            return manifest.image_id
    try:
        recorded = repo.source_manifest(plan.daemon_id)
        manifest = repo.read_manifest(recorded) if recorded else None
    except (RemoteNotFoundError, BlobCorruptError, FormatError):
        return None
    if manifest is not None and [layer.oid for layer in manifest.layers] == plan.diff_ids:
        return manifest.image_id
    return None


def _stored_whole(repo: Repository, manifest_oid: str) -> bool:
    """Every blob of a stored manifest exists with the size the manifest gives (one stat call)."""
    manifest = repo.read_manifest(manifest_oid)
    want = {manifest.config_key: manifest.config_size}
    want.update((layer.key, layer.stored_size) for layer in manifest.layers)
    found = repo.remote.stat(list(want))
    return all(key in found and found[key].size == size for key, size in want.items())


def _remote_exists(repo: Repository) -> bool:
    """False for a remote a push has yet to create; a foreign or newer format still raises."""
    try:
        return repo.check()
    except RemoteMissingError:
        raise
    except RemoteNotFoundError:
        return False


def execute_push(daemon: Daemon, repo: Repository, plan: PushPlan, compression: str, jobs: int,
                 progress: Callable[[str, int], None] = lambda oid, stored_size: None) -> Dict:
    """`progress(layer oid, stored bytes)` is called, from transfer threads, as each layer is stored."""
    result = plan.result()
    if plan.up_to_date:
        result["manifest"] = "sha256:" + (plan.current or "")
        return result
    repo.check(create=True)
    if plan.same_as:
        # On the containerd store the config digest was learnt by the earlier push, which recorded
        # the daemon's image ID under sources/.
        plan.existing = (repo.manifest_for_image(plan.config_oid) if plan.config_oid
                         else repo.source_manifest(plan.daemon_id))
        if plan.existing is None:
            raise DockerError("%s was not stored by the push of %s: run the push again" % (plan.ref, plan.same_as))
        plan.image_id = result["image_id"] = repo.read_manifest(plan.existing).image_id
    lease = push_lease(repo, plan)      # prune spares what this push references until the tag is written
    try:
        return _write_image(daemon, repo, plan, compression, jobs, result, progress)
    finally:
        drop_lease(repo, lease)


def _tag_existing(repo: Repository, plan: PushPlan, result: Dict) -> Dict:
    if plan.containerd:
        repo.write_source(plan.daemon_id, plan.existing)
    if plan.current != plan.existing:
        repo.write_tag(plan.ref, plan.existing)
    changed = plan.current != plan.existing
    result.update(manifest="sha256:" + plan.existing, bytes_transferred=0, changed=changed,
                  reason=plan.describe(done=True) if changed else None)
    return result


def _write_image(daemon: Daemon, repo: Repository, plan: PushPlan, compression: str, jobs: int, result: Dict,
                 progress: Callable[[str, int], None]) -> Dict:
    if plan.existing:
        return _tag_existing(repo, plan, result)
    uploaded: Dict[str, int] = {}
    export = _push_through_daemon if plan.via_daemon else _save_and_upload
    try:
        saved = export(daemon, repo, plan, set(plan.missing), compression, jobs, uploaded, progress)
    except _EndpointUnreachable:
        plan.via_daemon, export = False, _save_and_upload
        saved = export(daemon, repo, plan, set(plan.missing), compression, jobs, uploaded, progress)
    if saved.diff_ids != plan.diff_ids or plan.image_id not in (None, "sha256:" + saved.config_oid):
        raise DockerError("image %s changed while it was being pushed (now sha256:%s): run the push again"
                          % (plan.source, saved.config_oid))
    if plan.image_id is None:       # containerd store: now the config digest is known
        plan.image_id = result["image_id"] = "sha256:" + saved.config_oid
        plan.existing = repo.manifest_for_image(plan.config_oid)
        if plan.existing and _stored_whole(repo, plan.existing) and not plan.missing:
            return _tag_existing(repo, plan, result)
    damaged = damaged_reused_layers(repo, plan.present, saved.sizes)
    if damaged:
        # Stored copies that cannot be this layer: move them aside and upload the layer again
        # (a second pass over `docker save`, or a second push by Docker, in this rare case only).
        for oid in damaged:
            repo.quarantine(plan.present.pop(oid).key)
        again = export(daemon, repo, plan, set(damaged), compression, jobs, uploaded, progress)
        saved.layers.update(again.layers)
        plan.missing.extend(damaged)
        result.update(plan.result(), layers_repaired=["sha256:" + oid for oid in damaged])
    config_key = blob_key(plan.config_oid)
    if not repo.remote.put(config_key, saved.config_bytes) and sha256_hex(repo.remote.get(config_key)) != plan.config_oid:
        repo.quarantine(config_key)        # a damaged stored config: replace it
        repo.remote.put(config_key, saved.config_bytes)
    layers = []
    for oid in saved.diff_ids:
        spooled = saved.layers.get(oid)
        stored = spooled or plan.present[oid]
        layers.append(LayerEntry(oid, saved.sizes[oid], stored.encoding, stored.stored_size))
    manifest = Manifest(plan.config_oid, len(saved.config_bytes), tuple(layers))
    manifest_oid = repo.write_manifest(manifest)
    if plan.containerd:
        repo.write_source(plan.daemon_id, manifest_oid)
    repo.write_tag(plan.ref, manifest_oid)
    result.update(manifest="sha256:" + manifest_oid, bytes_transferred=sum(uploaded.values()) + (
        len(saved.config_bytes) if plan.config_missing else 0), reason=plan.describe(done=True))
    return result


def _save_and_upload(daemon: Daemon, repo: Repository, plan: PushPlan, wanted, compression: str, jobs: int,
                     uploaded: Dict[str, int], progress: Callable[[str, int], None]):
    """One pass over `docker save`: spool each wanted layer and upload it while the stream goes on."""
    spool = temp_dir_for(repo.remote)
    try:
        with TransferPool(jobs) as pool:
            def upload(layer):
                if repo.remote.put_file(blob_key(layer.oid, layer.encoding), layer.path):
                    uploaded[layer.oid] = layer.stored_size     # not when a concurrent push stored it first
                progress(layer.oid, layer.stored_size)

            saved = read_save_stream(daemon.save(plan.source), wanted, set(plan.diff_ids),
                                     compression, spool, lambda layer: pool.submit(upload, layer))
            pool.join()
    except OSError as exc:      # the spool's filesystem: full, read-only, gone
        raise RemoteError("spooling %s into %s failed: %s (the remote was not changed)"
                          % (plan.source, spool, exc.strerror or exc))
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return saved


def _push_through_daemon(daemon: Daemon, repo: Repository, plan: PushPlan, wanted, compression: str, _jobs: int,
                         uploaded: Dict[str, int], progress: Callable[[str, int], None]) -> SavedImage:
    """Docker's own push into the engine's loopback endpoint (containerd store): Docker sends only the
    layers whose pushed digest the remote does not vouch for, compressed as it keeps them; each is
    decoded while it arrives and stored by diff_id. Returns what `docker save` would have told."""
    spool = temp_dir_for(repo.remote)
    tag = private_tag()
    receiver = PushReceiver(repo, plan.present, compression, spool, tag, on_stored=progress)
    try:
        with LoopbackServer(only_under(ENGINE_NAME, receiver)) as server:
            target = "%s/%s" % (server.host, ENGINE_NAME)
            daemon.tag(plan.daemon_id, target, tag)
            tidying = _drop_stale_names(daemon, server, "%s:%s" % (target, tag))
            try:
                daemon.push(target, tag)
            except DockerError as exc:
                if not server.requests:
                    raise _EndpointUnreachable(exc)
                if receiver.failures:   # Docker's message names a status code; ours says what was wrong
                    raise DockerError("Docker daemon %s: the push of %s failed: %s"
                                      % (daemon.host, plan.source, receiver.failures[0]))
                raise
            finally:
                daemon.untag("%s:%s" % (target, tag))
                if tidying is not None:
                    tidying.join()
        _manifest, config, layers = receiver.image(lambda config_hex: repo.remote.get(blob_key(config_hex)))
    except FormatError as exc:
        raise DockerError("Docker daemon %s: the push of %s sent something other than one whole image: %s"
                          % (daemon.host, plan.source, exc))
    except OSError as exc:      # the spool's filesystem: full, read-only, gone
        raise RemoteError("spooling %s into %s failed: %s" % (plan.source, spool, exc.strerror or exc))
    finally:
        receiver.close()
        shutil.rmtree(spool, ignore_errors=True)
    uploaded.update(receiver.stored)
    pushed_id = "sha256:" + sha256_hex(receiver.manifest)
    if pushed_id != plan.daemon_id:
        raise DockerError("image %s changed while it was being pushed (now %s): run the push again" % (plan.source, pushed_id))
    diff_ids = [layer.oid for layer in layers]
    return SavedImage(sha256_hex(config), config, diff_ids, [], {layer.oid: layer.size for layer in layers},
                      {layer.oid: layer for layer in layers if layer.oid in wanted})
