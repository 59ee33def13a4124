"""Prune: exactly the unreferenced data goes, young data, live tickets and leased oids stay."""

import os
import threading
import time
from types import SimpleNamespace

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops import leases as _leases, prune as _prune
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError, FormatError, RemoteError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import blob_key, image_index_key, manifest_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.leases import drop_lease, push_lease, write_lease
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import mint_pull_ticket
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image

LATER = 3600        # plan "an hour from now", so everything written by the test is old


@pytest.fixture
def s3repo(s3_env, s3_bucket):
    return Repository(remote_from_url("s3://%s/reg/" % s3_bucket, endpoint_url=s3_env))


@pytest.fixture
def localrepo(tmp_path):
    return Repository(LocalRemote(str(tmp_path / "remote")))


def image_keys(oid, manifest):
    return {manifest_key(oid), image_index_key(manifest.config_oid), manifest.config_key} | {
        layer.key for layer in manifest.layers}


def all_keys(repo):
    return {info.key for info in repo.remote.list("") if not info.key.startswith(".staging")}


def test_removes_exactly_the_unreferenced_data(s3repo):
    kept_oid, kept = store_image(s3repo, "app:1", [b"shared", b"only-kept"])
    gone_oid, gone = store_image(s3repo, "app:2", [b"shared", b"only-gone"], tag=False)
    plan = plan_prune(s3repo, 60, now=time.time() + LATER)
    doomed = image_keys(gone_oid, gone) - {blob_key(kept.layers[0].oid)}
    assert {k for keys in plan.result()["deleted"].values() for k in keys} == doomed
    assert plan.count == 4 and plan.bytes == sum(i.size for i in s3repo.remote.stat(doomed).values())
    before = all_keys(s3repo)
    result = execute_prune(s3repo, plan)
    assert result["deleted_count"] == 4 and all_keys(s3repo) == before - doomed
    assert s3repo.read_config(s3repo.read_manifest(s3repo.resolve("app:1")[1]))


def test_young_garbage_is_spared_and_plan_writes_nothing(s3repo):
    store_image(s3repo, "app:1", [b"x"], tag=False)
    before = all_keys(s3repo)
    plan = plan_prune(s3repo, 3600)
    assert plan.reason is None and len(plan.spared_young) == 4
    assert all_keys(s3repo) == before


def test_deleting_a_tag_never_deletes_data_another_tag_uses(s3repo):
    oid = store_image(s3repo, "app:1", [b"x"])[0]
    s3repo.write_tag(ImageRef("app", "stable"), oid)
    s3repo.delete_tag(ImageRef("app", "1"))
    assert plan_prune(s3repo, 60, now=time.time() + LATER).count == 0


def test_deletion_order_is_reverse_write_order(localrepo):
    store_image(localrepo, "app:1", [b"x", b"y"], tag=False)
    order = []
    delete = localrepo.remote.delete
    localrepo.remote.delete = lambda key: (order.append(key.split("/")[0]), delete(key))
    execute_prune(localrepo, plan_prune(localrepo, 60, now=time.time() + LATER), jobs=1)
    assert [k for k in order if k != "leases"] == ["images", "manifests", "blobs", "blobs", "blobs"]


class S3Calls:
    def __init__(self, remote):
        self.names = []
        remote.client.meta.events.register("before-call.s3.*", lambda model, **_: self.names.append(model.name))


def test_s3_prune_deletes_in_batches_of_a_thousand(s3repo):
    """One DeleteObjects per 1000 keys, not a DeleteObject per key (1,500 round trips for 1,500 blobs)."""
    s3repo.check(create=True)
    keys = ["blobs/sha256/%s/%s" % (("%064x" % n)[:2], "%064x" % n) for n in range(1500)]
    parallel = _prune.parallel_map
    parallel(lambda key: s3repo.remote.put(key, b"x"), keys, 16)
    plan = plan_prune(s3repo, 60, now=time.time() + LATER)
    assert plan.count == 1500
    calls = S3Calls(s3repo.remote)
    result = execute_prune(s3repo, plan)
    assert result["deleted_count"] == 1500 and not list(s3repo.remote.list("blobs/"))
    assert calls.names.count("DeleteObjects") == 2, calls.names
    assert calls.names.count("DeleteObject") == 1, calls.names     # the prune's own marker


def test_the_prune_marker_is_refreshed_while_a_phase_is_deleting(localrepo, monkeypatch):
    """A phase that deletes for longer than the marker's life must not let the marker go stale: pushes
    would then stop waiting and reuse what is being deleted. Deleting here waits until the marker was
    rewritten after the phase began (a timer does it), or gives up after 30 s."""
    monkeypatch.setattr(_leases, "MARKER_REFRESH", 0.05, raising=False)
    store_image(localrepo, "app:1", [b"x"], tag=False)
    plan = plan_prune(localrepo, 60, now=time.time() + LATER)
    writes = []
    put, delete = localrepo.remote.put, localrepo.remote.delete

    def recording_put(key, data, overwrite=False):
        if key.startswith(_leases.MARKER_PREFIX):
            writes.append(key)
        return put(key, data, overwrite)

    def slow_delete(key):
        if not key.startswith("leases/"):
            seen, deadline = len(writes), time.monotonic() + 30
            while len(writes) == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(writes) > seen, "the prune marker was not rewritten while a phase was deleting"
        delete(key)
    monkeypatch.setattr(localrepo.remote, "put", recording_put)
    monkeypatch.setattr(localrepo.remote, "delete", slow_delete)
    assert execute_prune(localrepo, plan, jobs=1)["deleted_count"] == 4
    assert not list(localrepo.remote.list(_leases.MARKER_PREFIX))


def test_prune_stops_deleting_when_its_marker_cannot_be_rewritten(localrepo, monkeypatch):
    monkeypatch.setattr(_leases, "MARKER_TTL", 0.2)
    monkeypatch.setattr(_leases, "MARKER_REFRESH", 0.01)
    manifest = store_image(localrepo, "app:1", [b"x"], tag=False)[1]
    plan = plan_prune(localrepo, 60, now=time.time() + LATER)
    put, delete = localrepo.remote.put, localrepo.remote.delete
    writes = []

    def failing_put(key, data, overwrite=False):
        if key.startswith(_leases.MARKER_PREFIX):
            writes.append(key)
            if len(writes) > 1:
                raise RemoteError("the store is read-only now")
        return put(key, data, overwrite)

    def slow_delete(key):
        deadline = time.monotonic() + 30
        while len(writes) < 2 and time.monotonic() < deadline:     # a rewrite was tried, and failed
            time.sleep(0.01)
        time.sleep(0.15)        # longer than MARKER_TTL / 2 since the one marker write that worked
        delete(key)
    monkeypatch.setattr(localrepo.remote, "put", failing_put)
    monkeypatch.setattr(localrepo.remote, "delete", slow_delete)
    with pytest.raises(RemoteError, match=r"^prune stopped: its marker leases/prune-\w+.json on .* could not be rewritten "
                                          r"for \d+ s \(the store is read-only now\); pushes could stop waiting"):
        execute_prune(localrepo, plan, jobs=1)
    assert localrepo.remote.stat([manifest.config_key, manifest.layers[0].key])     # blobs come later: kept


def _skewed_store(repo, monkeypatch, skew):
    """Make the directory remote's clock `skew` seconds off this host's: every lease it stores gets that mtime."""
    put = repo.remote.put

    def put_with_skew(key, data, overwrite=False):
        done = put(key, data, overwrite)
        if key.startswith(_leases.LEASES_PREFIX):
            os.utime(repo.remote._path(key), (time.time() + skew,) * 2)
        return done
    monkeypatch.setattr(repo.remote, "put", put_with_skew)


def test_a_pusher_waits_for_a_live_marker_when_the_store_clock_is_behind(localrepo, monkeypatch):
    """The store's clock an hour behind this host's: a marker the store wrote just now still counts."""
    monkeypatch.setattr(_leases, "MARKER_POLL", 0.05)
    localrepo.check(create=True)
    _skewed_store(localrepo, monkeypatch, -3600)
    localrepo.remote.put("leases/prune-x.json", b"{}")
    threading.Timer(0.5, localrepo.remote.delete, ["leases/prune-x.json"]).start()
    write_lease(localrepo, ["0" * 64])
    assert not localrepo.remote.stat(["leases/prune-x.json"]), "write_lease did not wait for the running prune"


def test_a_pusher_ignores_a_stale_marker_when_the_store_clock_is_ahead(localrepo, monkeypatch):
    """The store's clock an hour ahead: a marker it wrote 30 minutes ago (a crashed prune) is stale."""
    monkeypatch.setattr(_leases, "MARKER_POLL", 0.01)
    localrepo.check(create=True)
    _skewed_store(localrepo, monkeypatch, 3600)
    localrepo.remote.put("leases/prune-x.json", b"{}")
    os.utime(localrepo.remote._path("leases/prune-x.json"), (time.time() + 1800,) * 2)
    polls = []
    listing = localrepo.remote.list

    def list_markers(prefix):
        if prefix == _leases.MARKER_PREFIX:
            polls.append(prefix)
            assert len(polls) < 5, "write_lease keeps waiting for a prune marker that is 30 minutes old by the store's clock"
        return listing(prefix)
    monkeypatch.setattr(localrepo.remote, "list", list_markers)
    assert write_lease(localrepo, ["0" * 64]).startswith("leases/")


def test_a_lease_taken_after_planning_is_honoured(s3repo):
    oid, manifest = store_image(s3repo, "app:1", [b"reused"], tag=False)
    plan = plan_prune(s3repo, 60, now=time.time() + LATER)
    assert plan.count == 4
    lease = write_lease(s3repo, [manifest.config_oid, manifest.layers[0].oid])
    result = execute_prune(s3repo, plan)
    assert result["kept"] == sorted([blob_key(manifest.layers[0].oid), manifest.config_key,
                                     image_index_key(manifest.config_oid)])
    assert result["deleted"]["manifests"] == [manifest_key(oid)]
    drop_lease(s3repo, lease)
    assert not list(s3repo.remote.list("leases/"))


def test_young_lease_spares_old_blobs_and_stale_lease_goes(localrepo):
    manifest = store_image(localrepo, "app:1", [b"old blob"], tag=False)[1]
    hour_ago = time.time() - 3600
    for key in all_keys(localrepo):
        os.utime(localrepo.remote._path(key), (hour_ago, hour_ago))
    write_lease(localrepo, [manifest.layers[0].oid])
    plan = plan_prune(localrepo, 600)
    assert sorted(plan.result()["deleted"]["blobs"]) == [manifest.config_key]
    assert plan.result()["deleted"]["leases"] == []
    assert len(plan_prune(localrepo, 600, now=time.time() + _leases.LEASE_TTL - 60).garbage["leases"]) == 0
    assert len(plan_prune(localrepo, 600, now=time.time() + _leases.LEASE_TTL + 700).garbage["leases"]) == 1


@pytest.mark.parametrize("grace", [0, 59])
def test_a_grace_below_the_minimum_is_refused(localrepo, grace):
    with pytest.raises(DogestryError, match="grace period of %ds is too short: at least 60s" % grace):
        plan_prune(localrepo, grace)


def test_a_live_lease_protects_its_blobs_whatever_the_grace(localrepo):
    """A push's lease is honoured by its own expiry: an hour-old lease still protects with a minute's grace."""
    manifest = store_image(localrepo, "app:1", [b"pushing"], tag=False)[1]
    write_lease(localrepo, [manifest.config_oid, manifest.layers[0].oid])
    hour_ago = time.time() - 3600
    for key in all_keys(localrepo):
        os.utime(localrepo.remote._path(key), (hour_ago, hour_ago))
    plan = plan_prune(localrepo, 60)
    assert plan.result()["deleted"]["blobs"] == [] and plan.live.leases == 1


def test_live_ticket_pins_its_manifest_and_expired_ticket_goes(s3repo):
    old_oid, old = store_image(s3repo, "app:1", [b"v1"])
    mint_pull_ticket(s3repo, "app:1", 7200)
    store_image(s3repo, "app:1", [b"v2"])
    assert plan_prune(s3repo, 60, now=time.time() + LATER).count == 0
    plan = plan_prune(s3repo, 60, now=time.time() + 7300)
    assert len(plan.garbage["tickets"]) == 1 and manifest_key(old_oid) in plan.result()["deleted"]["manifests"]


def test_write_lease_waits_for_a_running_prune(s3repo, monkeypatch):
    monkeypatch.setattr(_leases, "MARKER_POLL", 0.05)
    s3repo.check(create=True)
    s3repo.remote.put("leases/prune-x.json", b"{}")
    threading.Timer(0.5, s3repo.remote.delete, ["leases/prune-x.json"]).start()
    started = time.time()
    lease = write_lease(s3repo, ["0" * 64])
    assert time.time() - started >= 0.45 and lease.startswith("leases/")


def test_write_lease_fails_when_a_prune_took_what_the_plan_found(s3repo):
    manifest = store_image(s3repo, "app:1", [b"x"])[1]
    plan = SimpleNamespace(config_oid=manifest.config_oid, diff_ids=[manifest.layers[0].oid], existing=None,
                           config_missing=False, present={manifest.layers[0].oid: manifest.layers[0]})
    drop_lease(s3repo, push_lease(s3repo, plan))
    s3repo.remote.delete(manifest.layers[0].key)
    with pytest.raises(RemoteError, match=r"^blobs/sha256/\w\w/\w+ on s3://.* was deleted by a prune after this "
                                          r"push was planned: run the push again$"):
        push_lease(s3repo, plan)
    assert not list(s3repo.remote.list("leases/"))      # a failed lease is dropped


def test_a_malformed_tag_stops_prune_before_anything_is_deleted(localrepo):
    store_image(localrepo, "app:1", [b"kept"])
    store_image(localrepo, "app:2", [b"unreferenced"], tag=False)
    plan = plan_prune(localrepo, 60, now=time.time() + LATER)
    assert plan.count == 4
    localrepo.remote.put("repositories/app/_tags/1", b"\x00junk", overwrite=True)   # it may have named app:2
    before = all_keys(localrepo)
    message = (r"^prune refused: tag app:1 on %s does not hold a manifest digest; a malformed tag could name any "
               r"stored image, so prune deletes nothing while one is there: fix it, or remove it \(dogestry_tag "
               r"state=absent\), then prune again$" % localrepo.url)
    with pytest.raises(FormatError, match=message):
        execute_prune(localrepo, plan)
    assert all_keys(localrepo) == before
    with pytest.raises(FormatError, match=message):
        plan_prune(localrepo, 60, now=time.time() + LATER)
