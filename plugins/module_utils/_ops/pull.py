# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Pull: tag -> manifest -> config (verified) -> plan by ChainID -> stream each missing layer
(S3: parallel ranged GETs) -> verify while streaming into docker load (manifest.json last) -> tag.

On Docker's containerd image store Docker's own pull from the engine's loopback endpoint replaces
`docker load` (slow on that store). Every plan has a `reason`: what a real run would change, or None.

May import _format, _codecs, _storage, _docker and the rest of _ops; no front end.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .._docker.daemon import Daemon, LOADED_BY_DOGESTRY, image_layers
from .._docker.load import LoadLayer, load_stream, oci_load_stream
from .._errors import BlobCorruptError, DockerError, DogestryError, RemoteError, RemoteNotFoundError
from .._format.keys import sha256_hex
from .._format.manifest import LayerEntry, Manifest, chain_ids
from .._format.reference import ImageRef
from .._storage.repository import Repository
from .common import _EndpointUnreachable, _drop_stale_names, _serves_daemon, _unique, human_size
from .loopback import ENGINE_NAME, LoopbackServer, PullServer, only_under
from .signing import subject_digest


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
    signature: Optional[object] = None      # signing.py's Verified, when a policy required one

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
    """`policy` (a signing.py Policy): refuse, before anything is handed to Docker, what no trusted key signed."""
    repo.check()
    ref, target = repo.resolve_target(requested)
    if policy is None:
        return _plan_target(daemon, repo, requested, ref, target)
    # The tag is read once: what is verified is what is loaded (an index's signature pins its platforms).
    # The digest signed is read here (the manifest, which the plan reads next from the cache); the check's
    # three dependent reads (referrers, signature, bundle) run beside the plan's own. The plan is returned
    # only once the signature holds, and an unsigned release says so before any other fault.
    digest = subject_digest(repo, target)
    with ThreadPoolExecutor(1) as pool:
        signature = pool.submit(policy.require_digest, repo, digest, str(ref or requested))
        try:
            plan = _plan_target(daemon, repo, requested, ref, target)
        except Exception:
            signature.result()
            raise
        plan.signature = signature.result()
    return plan


def _plan_target(daemon: Daemon, repo: Repository, requested: str, ref: Optional[ImageRef], target) -> PullPlan:
    manifest_oid = repo.image_for(target, daemon.platform, str(ref))
    manifest = repo.read_manifest(manifest_oid)
    plan = PullPlan(requested, ref, manifest_oid, manifest, containerd=daemon.containerd_store)
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
