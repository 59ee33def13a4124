# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The sync engine: plan, then push or pull; no Ansible in here.

Push: docker image inspect -> remote stat -> (only if something is missing) docker save ->
hash/encode/spool each missing layer -> upload in parallel -> config -> manifest -> tag.
Pull: tag -> manifest -> config (verified) -> plan by ChainID -> stream each missing layer
(S3: parallel ranged GETs) -> verify while streaming into docker load (manifest.json last) -> tag.

On Docker's containerd image store, when the daemon shares our loopback, both go through Docker's own
push and pull instead of `docker save` / `docker load` (slow on that store): the engine serves the
remote to the daemon on 127.0.0.1 for the operation (_loopback), so Docker sends only the layers the
remote lacks and fetches only those it lacks; what is stored, and in which order, is the same.

Every plan has a `reason`: a sentence saying what a real run would change, or None; the result of
a real run carries `describe(done=True)`, the same sentence saying what was done.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ._docker import LOADED_BY_DOGESTRY, Daemon, image_layers
from ._docker_archive import LoadLayer, SavedImage, load_stream, oci_load_stream, read_save_stream
from ._errors import (
    BlobCorruptError, DockerError, DogestryError, FormatError, ImageReferenceError, RemoteError, RemoteMissingError, RemoteNotFoundError,
)
from ._format import (
    ENCODINGS, IMAGE_MANIFEST_MEDIA_TYPES, MANIFEST_MEDIA_TYPE, Descriptor, ImageRef, LayerEntry, Manifest, blob_key,
    chain_ids, looks_like_id_prefix, parse_digest, parse_image_ref, sha256_hex,
)
from ._loopback import ENGINE_NAME, ENGINE_PORT, HAS_CHEROOT, LoopbackServer, PullServer, PushReceiver, only_under, private_tag
from ._prune import drop_lease, push_lease
from ._remote import temp_dir_for
from ._repository import READ_JOBS, Repository, Target
from ._transfer import TransferPool, parallel_map
from ._verify import damaged_reused_layers


def _unique(items: List[str]) -> List[str]:
    return list(dict.fromkeys(items))


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return "%d B" % size


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


def _serves_daemon(daemon: Daemon) -> bool:
    """Whether the engine can serve the remote to the daemon as a registry (_loopback): on the containerd
    store its push and pull move only what is missing, where `docker save` / `docker load` move the whole
    image slowly. On the classic store those are faster than Docker's push (which gzips every layer)."""
    return HAS_CHEROOT and daemon.containerd_store and daemon.reaches_our_loopback


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


# ---- pull -----------------------------------------------------------------------------------

@dataclass
class PullPlan:
    requested: str
    ref: Optional[ImageRef]
    manifest_oid: str
    manifest: Manifest
    config: Optional[bytes] = None
    image_present: bool = False
    tag_present: bool = False
    containerd: bool = False
    via_daemon: bool = False        # Docker pulls it from the engine's loopback endpoint
    # (what must be downloaded, what the daemon already has), planned when first asked for: a pull Docker
    # makes itself finds out without inspecting every image of the daemon, so only check mode (and
    # whoever reads them before the pull) pays for that
    _layers: Optional[Tuple[List[LayerEntry], List[LayerEntry]]] = field(default=None, repr=False)
    _planner: Optional[Callable[[], Tuple[List[LayerEntry], List[LayerEntry]]]] = field(default=None, repr=False)

    @property
    def missing(self) -> List[LayerEntry]:
        return self._planned()[0]

    @property
    def skipped(self) -> List[LayerEntry]:
        return self._planned()[1]

    def _planned(self) -> Tuple[List[LayerEntry], List[LayerEntry]]:
        if self._layers is None:
            self._layers = self._planner() if self._planner else ([], [])
        return self._layers

    def moved(self, missing: List[LayerEntry]) -> None:
        """What a pull actually downloaded: the rest was present."""
        oids = {layer.oid for layer in missing}
        self._layers = (_unique_layers(missing), [layer for layer in self.manifest.layers if layer.oid not in oids])
    signature: Optional[object] = None      # _signing.Verified, when a policy required one

    @property
    def daemon_image_id(self) -> str:
        """What the daemon calls the image: its config digest, or on the containerd store the digest
        of the OCI manifest dogestry loads (the same on every host)."""
        if self.containerd:
            return "sha256:" + sha256_hex(self.manifest.oci_bytes())
        return self.manifest.image_id

    @property
    def reason(self) -> Optional[str]:
        return self.describe(done=False)

    def describe(self, done: bool) -> Optional[str]:
        """What a real run would change (done=False), or what it changed (done=True); None for nothing."""
        if self.image_present:
            if self.tag_present:
                return None
            return "%s: image %s is present, tag %s" % (self.ref, self.manifest.image_id[:19],
                                                        "set" if done else "would be set")
        stored = sum(layer.stored_size for layer in self.missing)
        return "%s: %d of %d layers (%s) %s" % (
            self.ref or self.requested, len(self.missing), len(_unique([l.oid for l in self.manifest.layers])),
            human_size(stored), "downloaded" if done else "to download")

    def result(self) -> Dict:
        return {
            "image": str(self.ref) if self.ref else None,
            "image_id": self.manifest.image_id,
            "daemon_image_id": self.daemon_image_id,
            "manifest": "sha256:" + self.manifest_oid,
            "changed": self.reason is not None,
            "reason": self.reason,
            "layers_transferred": ["sha256:" + layer.oid for layer in self.missing],
            "layers_skipped": ["sha256:" + layer.oid for layer in self.skipped],
            "bytes_transferred": sum(layer.stored_size for layer in self.missing),
            **({"signature": self.signature.result()} if self.signature is not None else {}),
        }


def plan_pull(daemon: Daemon, repo: Repository, requested: str, policy=None) -> PullPlan:
    """`policy` (a _signing.Policy): refuse, before Docker is asked anything, what no trusted key signed."""
    repo.check()
    ref, target = repo.resolve_target(requested)
    # the tag is read once: what is verified is what is loaded (an index's signature pins its platforms)
    signature = policy.require(repo, target, str(ref or requested)) if policy is not None else None
    manifest_oid = repo.image_for(target, daemon.platform, str(ref))
    manifest = repo.read_manifest(manifest_oid)
    plan = PullPlan(requested, ref, manifest_oid, manifest, containerd=daemon.containerd_store, signature=signature)
    info = daemon.inspect(plan.daemon_image_id)
    if info is not None and image_layers(info) == [layer.oid for layer in manifest.layers]:
        plan.image_present = True
        plan.tag_present = ref is None or str(ref) in set(info.get("RepoTags") or [])
        return plan
    plan.config = repo.read_config(manifest)
    plan.via_daemon = plan.containerd and ref is not None and _serves_daemon(daemon)
    plan._planner = lambda: _plan_downloads(daemon, repo, plan)
    if not plan.via_daemon:
        plan._planned()
    return plan


def _plan_downloads(daemon: Daemon, repo: Repository, plan: PullPlan) -> Tuple[List[LayerEntry], List[LayerEntry]]:
    """(layers to download, layers the daemon has); BlobCorruptError if one to download is not stored."""
    layers = list(plan.manifest.layers)
    if plan.containerd and not plan.via_daemon:
        # `docker load` into containerd needs every layer blob its content store lacks, wherever
        # it sits in the stack (snapshots alone do not do: the image would register without layers).
        present = daemon.present_layer_blobs()
        skipped = [layer for layer in layers if layer.oid in present]
        remaining = [layer for layer in layers if layer.oid not in present]
    else:
        # The classic store's load, and any pull Docker makes itself, skip a layer when the daemon has
        # its ChainID (that layer and all below it).
        present = daemon.present_chain_ids()
        have = 0
        for chain in chain_ids([layer.oid for layer in layers]):
            if chain not in present:
                break
            have += 1
        skipped, remaining = layers[:have], layers[have:]
    missing = _unique_layers(remaining)
    stored = repo.remote.stat([layer.key for layer in missing]) if missing else {}
    absent = [layer for layer in missing if layer.key not in stored]
    if absent:
        raise BlobCorruptError(_missing_layer(repo, plan, absent[0]))
    return missing, skipped


def _missing_layer(repo: Repository, plan: PullPlan, layer: LayerEntry) -> str:
    return "%s is damaged: layer sha256:%s of %s is missing (push the image again)" % (
        repo.url, layer.oid, plan.ref or plan.requested)


def execute_pull(daemon: Daemon, repo: Repository, plan: PullPlan,
                 progress: Callable[[LoadLayer], None] = lambda layer: None) -> Dict:
    if plan.image_present:
        result = plan.result()
        if plan.reason is not None:
            daemon.tag(plan.daemon_image_id, plan.ref.name, plan.ref.tag)
            result.update(bytes_transferred=0, reason=plan.describe(done=True))
        return result
    if plan.via_daemon:
        try:
            fetched = _pull_through_daemon(daemon, repo, plan, progress)
        except _EndpointUnreachable:
            plan.via_daemon, plan._layers = False, None     # plan again, for docker load
            fetched = None
    if plan.via_daemon:
        plan.moved(fetched)     # what Docker fetched: what check mode's plan predicts, by the same rule
        result = plan.result()
        info = daemon.inspect(plan.daemon_image_id)
        if info is not None and image_layers(info) == [layer.oid for layer in plan.manifest.layers]:
            result["reason"] = plan.describe(done=True)
            return result
        # Docker does not fetch a layer it has unpacked already; if that copy came from an image of its
        # own (compressed blobs), the new image lacks the layer's blob: load the skipped layers' blobs.
        known = daemon.present_layer_blobs()
        plan.moved(fetched + [layer for layer in plan.skipped if layer.oid not in known])
        load = [layer for layer in plan.missing if layer.oid not in {f.oid for f in fetched}]
        result.update(plan.result())
        _load(daemon, repo, plan, load, progress)
        result["reason"] = plan.describe(done=True)
        return result
    result = plan.result()
    _load(daemon, repo, plan, plan.missing, progress)
    result["reason"] = plan.describe(done=True)
    return result


class _EndpointUnreachable(Exception):
    """Docker's push or pull failed without one request reaching the loopback endpoint: the daemon's 127.0.0.1
    is not ours after all (a tcp:// address on our loopback that forwards to a daemon elsewhere). Nothing was
    moved, so the operation goes the docker save / docker load way instead."""


def _unique_layers(layers: List[LayerEntry]) -> List[LayerEntry]:
    return list({layer.oid: layer for layer in layers}.values())


def _pull_through_daemon(daemon: Daemon, repo: Repository, plan: PullPlan,
                         progress: Callable[[LoadLayer], None]) -> List[LayerEntry]:
    """Docker's own pull from the engine's loopback endpoint (containerd store), by the digest of the
    image as dogestry shows it (the daemon's image ID afterwards): Docker fetches the layers it lacks,
    each decoded and verified while it streams; then the pull is given its name. Returns the layers
    Docker fetched."""
    app = PullServer(repo, plan.manifest, plan.config, lambda layer: progress(
        LoadLayer(layer.oid, layer.size, layer.encoding, None)))
    with LoopbackServer(only_under(ENGINE_NAME, app)) as server:
        source = "%s/%s" % (server.host, ENGINE_NAME)
        tidying = _drop_stale_names(daemon, server, "%s@%s" % (source, app.digest))
        try:
            daemon.pull(source, app.digest)
        except DockerError as exc:
            if not server.requests:
                raise _EndpointUnreachable(exc)
            if app.failures:    # what Docker reports is a cut connection: say why it was cut
                failure = app.failures[0]
                if isinstance(failure, RemoteNotFoundError):
                    raise BlobCorruptError(_missing_layer(repo, plan, app.failed_layers[0]))
                raise failure if isinstance(failure, DogestryError) else RemoteError(
                    "reading %s failed: %s" % (repo.url, failure))
            raise
        finally:
            if tidying is not None:
                tidying.join()
        # named while this process holds the port: another run's tidying takes no name of a live pull
        daemon.tag(app.digest, plan.ref.name, plan.ref.tag)
        daemon.untag("%s@%s" % (source, app.digest))
    return [layer for layer in plan.manifest.layers if layer.oid in app.served]


def _drop_stale_names(daemon: Daemon, server: LoopbackServer, keep: str) -> Optional[threading.Thread]:
    """Drop the names of the endpoint that a killed run left on the daemon, beside the operation (a
    thread: it costs the daemon a listing). While this process holds the fixed port no other run uses
    it, so every name under it but `keep` (this run's) is stale. join() the thread before moving on."""
    if not server.host.endswith(":%d" % ENGINE_PORT):
        return None

    def drop():
        try:
            for name in daemon.names_under("%s/%s" % (server.host, ENGINE_NAME)):
                if name != keep:
                    daemon.untag(name)
        except DockerError:
            pass        # only tidying: the next run tries again
    thread = threading.Thread(target=drop, name="dogestry-tidy", daemon=True)
    thread.start()
    return thread


def _load(daemon: Daemon, repo: Repository, plan: PullPlan, send: List[LayerEntry],
          progress: Callable[[LoadLayer], None]) -> None:
    """`docker load` of an archive holding the layers `send` (those the daemon lacks), each verified while it streams."""
    missing = {layer.oid for layer in send}
    readers = _LayerReaders(repo.remote, send)
    load_layers = []
    for layer in plan.manifest.layers:
        if layer.oid in missing:
            what = "layer sha256:%s of %s on %s" % (layer.oid, plan.ref or plan.requested, repo.url)
            load_layers.append(LoadLayer(layer.oid, layer.size, layer.encoding, readers.opener(layer), what))
        else:
            load_layers.append(LoadLayer(layer.oid, layer.size, layer.encoding, None))
    tags = [str(plan.ref)] if plan.ref else []
    if plan.containerd:
        archive = oci_load_stream(plan.manifest.oci_bytes(), plan.manifest.config_oid, plan.config, tags,
                                  load_layers, LOADED_BY_DOGESTRY, progress)
    else:
        archive = load_stream(plan.manifest.config_oid, plan.config, tags, load_layers, progress)
    try:
        daemon.load(archive)
    finally:
        readers.close()
    info = daemon.inspect(plan.daemon_image_id)
    if info is None or image_layers(info) != [layer.oid for layer in plan.manifest.layers]:
        if info is not None:
            daemon.remove(plan.daemon_image_id)     # registered without its layers: never leave it usable
        raise DockerError("Docker daemon %s accepted the archive but has no complete image %s afterwards"
                          % (daemon.host, plan.daemon_image_id))


class _LayerReaders:
    """Opens each missing layer when `docker load` reaches it, and the next one right away.

    A directory remote is read in place. Other remotes stream (S3: parallel ranged GETs of the
    layer), so the daemon untars a layer while it downloads, and the next layer's first parts
    are already on their way when this one ends.
    """

    def __init__(self, remote, layers: List[LayerEntry]):
        self._remote = remote
        self._order = [layer.oid for layer in layers]
        self._layers = {layer.oid: layer for layer in layers}
        self._open: Dict[str, object] = {}

    def _start(self, oid: str):
        if oid not in self._open:
            layer = self._layers[oid]
            self._open[oid] = self._remote.open(layer.key, layer.stored_size)
        return self._open[oid]

    def opener(self, layer: LayerEntry) -> Callable[[], object]:
        def open_stored():
            reader = self._start(layer.oid)
            following = self._order.index(layer.oid) + 1
            if following < len(self._order):
                self._start(self._order[following])
            del self._open[layer.oid]
            return reader
        return open_stored

    def close(self):
        for reader in self._open.values():
            reader.close()
        self._open.clear()


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
