"""The engine's planning, without Docker: what a pull must download given the layers a daemon has, the
wording of what would change, and tag changes. The remote is a real directory remote in tmp_path; the
daemon is a small fake that only answers the questions planning asks."""

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.common import human_size
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.pull import execute_pull, plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.tags import TagChange, execute_tag, plan_tag
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError, ImageReferenceError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import chain_ids
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image

LAYERS = [b"base layer", b"middle layer", b"top layer"]
OIDS = [sha256_hex(data) for data in LAYERS]


class PlanningDaemon:
    """What plan_pull asks a daemon: its platform and image store, an image by id, the layers it holds."""

    def __init__(self, containerd=False, images=None, chains=(), blobs=()):
        self.platform = ("linux", "amd64", None)
        self.containerd_store = containerd
        self.reaches_our_loopback = False       # the save/load path's planning (Docker's own pull plans its own)
        self.images = images or {}
        self.chains, self.blobs = set(chains), set(blobs)

    def inspect(self, ref):
        return self.images.get(ref)

    def present_chain_ids(self):
        return self.chains

    def present_layer_blobs(self):
        return self.blobs

    def __getattr__(self, name):
        raise AssertionError("planning asked the daemon for %s" % name)


@pytest.fixture
def repo(tmp_path):
    return Repository(LocalRemote(str(tmp_path / "remote")))


@pytest.mark.parametrize("size, shown", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                         (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"), (5 << 40, "5120.0 GiB")])
def test_human_size(size, shown):
    assert human_size(size) == shown


def test_a_cold_classic_daemon_needs_every_layer(repo):
    oid, manifest = store_image(repo, "app:1", LAYERS)
    plan = plan_pull(PlanningDaemon(), repo, "app:1")
    assert [layer.oid for layer in plan.missing] == OIDS and plan.skipped == []
    total = sum(len(data) for data in LAYERS)
    assert plan.reason == "app:1: 3 of 3 layers (%d B) to download" % total
    result = plan.result()
    assert (result["changed"], result["manifest"], result["bytes_transferred"]) == (True, "sha256:" + oid, total)
    assert result["layers_transferred"] == ["sha256:" + o for o in OIDS] and result["daemon_image_id"] == manifest.image_id


def test_the_classic_store_skips_the_bottom_layers_whose_chain_it_has_and_nothing_above_a_gap(repo):
    store_image(repo, "app:1", LAYERS)
    chains = chain_ids(OIDS)
    plan = plan_pull(PlanningDaemon(chains=chains[:2]), repo, "app:1")
    assert ([layer.oid for layer in plan.skipped], [layer.oid for layer in plan.missing]) == (OIDS[:2], OIDS[2:])
    assert plan.reason == "app:1: 1 of 3 layers (%d B) to download" % len(LAYERS[2])
    # the top layer's ChainID alone is no use without the ones below it: the classic store keys layers by chain
    plan = plan_pull(PlanningDaemon(chains=[chains[0], chains[2]]), repo, "app:1")
    assert ([layer.oid for layer in plan.skipped], [layer.oid for layer in plan.missing]) == (OIDS[:1], OIDS[1:])


def test_the_containerd_store_skips_any_blob_it_has_wherever_it_sits(repo):
    oid, manifest = store_image(repo, "app:1", LAYERS)
    plan = plan_pull(PlanningDaemon(containerd=True, blobs=[OIDS[1]]), repo, "app:1")
    assert ([layer.oid for layer in plan.skipped], [layer.oid for layer in plan.missing]) == ([OIDS[1]], [OIDS[0], OIDS[2]])
    assert plan.daemon_image_id == "sha256:" + sha256_hex(manifest.oci_bytes()) != manifest.image_id


def test_a_layer_repeated_in_an_image_is_downloaded_once(repo):
    store_image(repo, "app:1", [b"same", b"other", b"same"])
    plan = plan_pull(PlanningDaemon(), repo, "app:1")
    assert [layer.oid for layer in plan.missing] == [sha256_hex(b"same"), sha256_hex(b"other")]
    assert plan.reason == "app:1: 2 of 2 layers (9 B) to download"


def test_a_present_image_with_its_tag_is_no_change_and_without_it_only_the_tag(repo):
    _oid, manifest = store_image(repo, "app:1", LAYERS)
    info = {"RootFS": {"Layers": ["sha256:" + o for o in OIDS]}, "RepoTags": ["app:1"]}
    plan = plan_pull(PlanningDaemon(images={manifest.image_id: info}), repo, "app:1")
    assert (plan.image_present, plan.tag_present, plan.reason, plan.result()["changed"]) == (True, True, None, False)
    result = execute_pull(PlanningDaemon(), repo, plan)     # nothing to do: the daemon is not asked anything
    assert result["changed"] is False and result["layers_transferred"] == []
    info["RepoTags"] = ["other:2"]
    plan = plan_pull(PlanningDaemon(images={manifest.image_id: info}), repo, "app:1")
    assert plan.reason == "app:1: image %s is present, tag would be set" % manifest.image_id[:19]
    assert plan.describe(done=True) == "app:1: image %s is present, tag set" % manifest.image_id[:19]


def test_an_image_with_other_layers_under_the_same_id_is_pulled(repo):
    _oid, manifest = store_image(repo, "app:1", LAYERS)
    info = {"RootFS": {"Layers": ["sha256:" + o for o in OIDS[:2]]}, "RepoTags": ["app:1"]}
    plan = plan_pull(PlanningDaemon(images={manifest.image_id: info}), repo, "app:1")
    assert plan.image_present is False and len(plan.missing) == 3


def test_a_layer_missing_from_the_remote_is_named_before_anything_is_loaded(repo):
    _oid, manifest = store_image(repo, "app:1", LAYERS)
    repo.remote.delete(manifest.layers[1].key)
    with pytest.raises(BlobCorruptError) as exc:
        plan_pull(PlanningDaemon(), repo, "app:1")
    assert str(exc.value) == "%s is damaged: layer sha256:%s of app:1 is missing (push the image again)" % (repo.url, OIDS[1])


def test_an_unknown_tag_is_an_image_reference_error(repo):
    store_image(repo, "app:1", LAYERS)
    with pytest.raises(ImageReferenceError):
        plan_pull(PlanningDaemon(), repo, "app:2")


def test_tag_planning_and_its_wording(repo):
    first = store_image(repo, "app:1", [b"one"])[0]
    second = store_image(repo, "app:2", [b"two"])[0]
    ref = parse_image_ref("app:stable")
    change = plan_tag(repo, ref, "app:1")
    assert (change.before, change.after) == (None, first)
    assert change.reason == "app:stable would point at manifest sha256:%s" % first[:12]
    execute_tag(repo, change)
    assert repo.read_target(ref) == first
    assert plan_tag(repo, ref, "app:1").reason is None          # already so: no change
    change = plan_tag(repo, ref, "app:2")
    assert change.reason == "app:stable would point at manifest sha256:%s (was sha256:%s)" % (second[:12], first[:12])
    change = plan_tag(repo, ref, None)
    assert change.reason == "app:stable would be removed (was sha256:%s)" % first[:12]
    execute_tag(repo, change)
    assert "app:stable" not in [str(r) for r in repo.list_targets("app", "*")]


def test_a_malformed_tag_is_a_change_even_to_the_same_target():
    ref = parse_image_ref("app:1")
    assert TagChange(ref, None, None, malformed="not JSON").reason == "app:1 would be removed (was malformed: not JSON)"
    assert TagChange(ref, None, None).reason is None
