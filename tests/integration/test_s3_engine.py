"""The engine against moto's S3 server (real HTTP, real signing) and a real dockerd.

Images are built locally by conftest's build_image (busybox base + COPY layers, --network none).
A 6 MiB random layer with part_size = 5 MiB (S3's minimum, which moto enforces) makes the
multipart upload and the ranged GETs really happen.
"""

import os
import sys
import threading
import time
import uuid

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.daemon import Daemon
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.pull import execute_pull, plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.push import execute_push, plan_push
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    BlobCorruptError, RemoteAuthError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import mint_pull_ticket

MiB = 1 << 20
BIG = os.urandom(6 * MiB)       # random: lz4 cannot shrink it below one part


class Calls:
    """S3 operations made through a remote's client, by name."""

    def __init__(self, remote):
        self.names = []
        self.ranges = []
        remote.client.meta.events.register("before-call.s3.*", lambda model, **_: self.names.append(model.name))
        remote.client.meta.events.register("provide-client-params.s3.GetObject", self._range)

    def _range(self, params, **_):
        if "Range" in params:
            self.ranges.append((params["Key"], params["Range"]))

    def count(self, name):
        return self.names.count(name)


@pytest.fixture
def s3url(s3_bucket):
    return "s3://%s/registry/" % s3_bucket


@pytest.fixture
def repo_for(s3_env):
    return lambda url, **kw: Repository(remote_from_url(url, endpoint_url=s3_env, part_size=5 * MiB,
                                                        jobs=kw.pop("jobs", 2), **kw))


@pytest.fixture
def daemon(docker_host):
    return Daemon(docker_host)


@pytest.fixture
def name():
    return "dogestry-s3-%s" % uuid.uuid4().hex[:8]


def push(daemon, repo, image, jobs=2):
    return execute_push(daemon, repo, plan_push(daemon, repo, image), "lz4", jobs)


def pull(daemon, repo, image):
    return execute_pull(daemon, repo, plan_pull(daemon, repo, image))


def test_round_trip_with_multipart_and_ranged_gets(daemon, build_image, s3url, repo_for, name):
    image_id = build_image(daemon.host, name + ":1", [{"/big.bin": BIG}, {"/small.txt": name}])
    repo = repo_for(s3url)
    calls = Calls(repo.remote)
    pushed = push(daemon, repo, name + ":1")
    assert calls.count("UploadPart") == 2 and calls.count("CompleteMultipartUpload") == 1
    big = [layer for layer in repo.read_manifest(pushed["manifest"][7:]).layers if layer.size > 5 * MiB][0]
    etag = repo.remote.client.head_object(Bucket=repo.remote.bucket, Key=repo.remote.prefix + big.key)["ETag"]
    assert etag.strip('"').endswith("-2")
    assert plan_push(daemon, repo, name + ":1").reason is None
    daemon.remove(name + ":1")
    calls.names.clear()
    result = pull(daemon, repo, name + ":1")
    assert "sha256:" + big.oid in result["layers_transferred"]
    assert sorted(r for key, r in calls.ranges if key.endswith(big.key)) == [
        "bytes=0-5242879", "bytes=5242880-%d" % (big.stored_size - 1)]
    assert daemon.inspect(name + ":1")["Id"] == image_id


def test_pull_reads_ahead_into_the_next_layer_within_the_budget(daemon, build_image, s3url, repo_for, name):
    """A pull opens the next layer when `docker load` reaches the current one: the next one's first part
    is fetched while the current one drains, and the parts held stay within the remote's read-ahead
    budget (its own accounting: buffers granted, whether downloaded yet or not), then all go back."""
    layers = [{"/l%d.bin" % i: os.urandom(12 * MiB)} for i in range(3)]    # random: 3 parts each, stored lz4
    image_id = build_image(daemon.host, name + ":1", layers, isolated=True)
    push(daemon, repo_for(s3url), name + ":1")
    daemon.remove(name + ":1")
    repo = repo_for(s3url, jobs=1)
    calls = Calls(repo.remote)
    budget, part = repo.remote.read_ahead, repo.remote.part_size
    assert budget.limit == 3 * part                # (jobs + 2) parts
    result = pull(daemon, repo, name + ":1")
    assert daemon.inspect(name + ":1")["Id"] == image_id and len(result["layers_transferred"]) == 4
    # the first big layer took the whole budget when it was opened, early; the second then got its first
    # part before a byte of the first was read: the budget, and one part for the second open reader
    assert budget.limit <= budget.peak <= budget.limit + part     # bounded; the exact peak is the scheduler's
    assert budget.held == 0 and budget.readers == []
    assert sum(1 for _key, r in calls.ranges if r.startswith("bytes=0-")) == 3


def test_ranged_reads_resume_a_part_where_its_connection_broke(s3_env, s3_bucket):
    """Responses cut short mid-body (the fault proxy over moto): each part is resumed from the byte it
    had reached, not fetched again whole, and the bytes read back are the object's."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from s3_faults import FaultProxy
    part = 5 * MiB
    data = os.urandom(3 * part + 12345)
    remote_from_url("s3://%s/cut/" % s3_bucket, endpoint_url=s3_env).put("blob", data)
    proxy = FaultProxy(s3_env, seed=3, faults={"truncate": 0.3})       # seed 3: the first answer is cut
    try:
        remote = remote_from_url("s3://%s/cut/" % s3_bucket, endpoint_url=proxy.url, part_size=part, jobs=2)
        calls = Calls(remote)
        with remote.open("blob", len(data)) as body:
            assert b"".join(iter(lambda: body.read(MiB), b"")) == data
    finally:
        proxy.stop()
    starts = [int(r[len("bytes="):].split("-")[0]) for _key, r in calls.ranges]
    resumed = [start for start in starts if start % part]
    assert proxy.injected["truncate"] >= 1 and len(resumed) == proxy.injected["truncate"], (starts, dict(proxy.injected))
    assert remote.read_ahead.held == 0


def test_concurrent_pushes_sharing_layers(daemon, build_image, s3url, repo_for, name):
    shared = {"/shared.bin": os.urandom(64 * 1024)}
    for tag in ("a", "b"):
        build_image(daemon.host, "%s:%s" % (name, tag), [shared, {"/own": tag * 1000}])
    results = {}
    threads = [threading.Thread(target=lambda t=tag: results.update({t: push(daemon, repo_for(s3url), "%s:%s" % (name, t))}))
               for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    repo = repo_for(s3url)
    assert sorted(str(ref) for ref in repo.list_tags()) == [name + ":a", name + ":b"]
    manifests = [repo.read_manifest(results[t]["manifest"][7:]) for t in ("a", "b")]
    assert manifests[0].layers[1].oid == manifests[1].layers[1].oid           # the shared COPY layer
    assert len(list(repo.remote.list("blobs/"))) == 2 + 4     # 2 configs; base, shared, 2 own layers: once each
    for manifest in manifests:
        assert repo.read_config(manifest) and repo.remote.stat([l.key for l in manifest.layers]).keys() == {
            l.key for l in manifest.layers}


def test_interrupted_push_leaves_no_tag_and_rerun_skips_finished_blobs(daemon, build_image, s3url, repo_for, name):
    build_image(daemon.host, name + ":1", [{"/one": "1" * 5000}, {"/two": "2" * 5000}])
    repo = repo_for(s3url)
    real_put_file, landed = repo.remote.put_file, []

    def dies_after_first_blob(key, path):
        if landed:
            raise KeyboardInterrupt("killed")
        landed.append(key)
        return real_put_file(key, path)
    repo.remote.put_file = dies_after_first_blob
    with pytest.raises(KeyboardInterrupt):
        push(daemon, repo, name + ":1", jobs=1)
    fresh = repo_for(s3url)
    assert fresh.read_tag(ImageRef(name, "1")) is None and len(landed) == 1
    assert not list(fresh.remote.list("leases/"))
    result = push(daemon, fresh, name + ":1")
    finished = "sha256:" + landed[0].rsplit("/", 1)[1].split(".")[0]
    assert len(result["layers_transferred"]) == 2 and finished not in result["layers_transferred"]
    assert result["layers_skipped"] == [finished]
    assert fresh.read_tag(ImageRef(name, "1")) == result["manifest"][7:]


PUSH_SCRIPT = """
import sys
from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.daemon import Daemon
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.push import execute_push, plan_push
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
host, url, endpoint, image = sys.argv[1:]
daemon, repo = Daemon(host), Repository(remote_from_url(url, endpoint_url=endpoint, part_size=5 << 20, jobs=1))
execute_push(daemon, repo, plan_push(daemon, repo, image), "lz4", 1)
"""


def test_push_killed_mid_upload_leaves_no_tag_and_rerun_skips_finished_blobs(daemon, build_image, s3url, s3_env,
                                                                             repo_for, name):
    """A real SIGKILL of a pushing process, as soon as its first layer blob is visible in the bucket."""
    import signal
    import subprocess
    import sys
    from conftest import COLLECTIONS
    build_image(daemon.host, name + ":1", [{"/l%d" % i: os.urandom(12 * MiB)} for i in range(4)])
    repo = repo_for(s3url)
    proc = subprocess.Popen([sys.executable, "-c", PUSH_SCRIPT, daemon.host, s3url, s3_env, name + ":1"],
                            env=dict(os.environ, PYTHONPATH=COLLECTIONS), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    layers = []
    while not layers and proc.poll() is None and time.time() < deadline:
        layers = [info.key for info in repo.remote.list("blobs/") if info.key.endswith(".lz4")]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, "the push ended before it could be killed: %s" % output
    assert layers, output
    assert repo.read_tag(ImageRef(name, "1")) is None
    assert not list(repo.remote.list("repositories/"))
    finished = {"sha256:" + key.rsplit("/", 1)[1].split(".")[0] for key in layers}

    result = push(daemon, repo_for(s3url), name + ":1")
    assert finished.isdisjoint(result["layers_transferred"])
    assert finished <= set(result["layers_skipped"])
    assert len(result["layers_transferred"]) + len(result["layers_skipped"]) == 5
    assert repo.read_tag(ImageRef(name, "1")) == result["manifest"][7:]


@pytest.mark.parametrize("damage, message", [
    ("delete", r"is damaged: layer sha256:\w+ of .* is missing \(push the image again\)"),
    ("corrupt", r"layer sha256:\w+ of .* on s3://\S+ is (corrupt|not a valid lz4 frame)"),
])
def test_damaged_blob_fails_pull_and_leaves_no_image(daemon, build_image, s3url, repo_for, name, damage, message):
    build_image(daemon.host, name + ":1", [{"/payload": os.urandom(100 * 1024)}])
    repo = repo_for(s3url)
    top = repo.read_manifest(push(daemon, repo, name + ":1")["manifest"][7:]).layers[-1]
    if damage == "delete":
        repo.remote.delete(top.key)
    else:
        data = bytearray(repo.remote.get(top.key))
        data[len(data) // 2] ^= 0xFF
        repo.remote.put(top.key, bytes(data), overwrite=True)
    image_id = daemon.inspect(name + ":1")["Id"]
    daemon.remove(name + ":1")
    with pytest.raises(BlobCorruptError, match=message):
        pull(daemon, repo, name + ":1")
    assert daemon.inspect(image_id) is None and daemon.inspect(name + ":1") is None


def test_signed_url_pull_without_credentials_then_expired(daemon, build_image, s3url, repo_for, name, monkeypatch,
                                                          tmp_path):
    image_id = build_image(daemon.host, name + ":1", [{"/signed": name}])
    repo = repo_for(s3url)
    push(daemon, repo, name + ":1")
    url = mint_pull_ticket(repo, name + ":1", 300)[0]
    short, short_expires = mint_pull_ticket(repo, name + ":1", 1)
    daemon.remove(name + ":1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    remote = remote_from_url(url)
    pulled = pull(daemon, Repository(remote), remote.image)
    assert pulled["image"] == name + ":1" and daemon.inspect(name + ":1")["Id"] == image_id
    monkeypatch.setattr(time, "time", lambda: short_expires + 1)     # the clock, not a sleep against the TTL
    with pytest.raises(RemoteAuthError, match="^signed URL expired at .*; mint a new one"):
        remote_from_url(short)


def test_prune_removes_unreferenced_and_spares_inflight_push(daemon, build_image, s3url, repo_for, name):
    reused = {"/reused.bin": os.urandom(32 * 1024)}
    build_image(daemon.host, name + ":keep", [{"/keep": "k" * 3000}])
    build_image(daemon.host, name + ":old", [reused, {"/old": "o" * 3000}])
    build_image(daemon.host, name + ":new", [reused, {"/new": "n" * 3000}])
    repo = repo_for(s3url)
    keep = repo.read_manifest(push(daemon, repo, name + ":keep")["manifest"][7:])
    old_oid = push(daemon, repo, name + ":old")["manifest"][7:]
    old = repo.read_manifest(old_oid)
    repo.delete_tag(ImageRef(name, "old"))
    plan = plan_prune(repo, 60, now=time.time() + 3600)     # an hour later: everything unreferenced is old
    reused_key = old.layers[1].key
    assert reused_key in plan.result()["deleted"]["blobs"]
    # A push of :new (reusing the old layer) is in flight when prune runs.
    pusher = repo_for(s3url)
    gate, resume = threading.Event(), threading.Event()
    real_put_file = pusher.remote.put_file

    def slow_put_file(key, path):
        gate.set()
        resume.wait(30)
        return real_put_file(key, path)
    pusher.remote.put_file = slow_put_file
    new_plan = plan_push(daemon, pusher, name + ":new")
    assert old.layers[1].oid in new_plan.present
    thread = threading.Thread(target=execute_push, args=(daemon, pusher, new_plan, "lz4", 2))
    thread.start()
    assert gate.wait(30)
    result = execute_prune(repo, plan)
    resume.set()
    thread.join(60)
    assert reused_key in result["kept"] and "blobs/sha256/%s/%s" % (old.config_oid[:2], old.config_oid) in \
        result["deleted"]["blobs"]
    assert result["deleted"]["manifests"] == ["manifests/sha256/" + old_oid]
    left = {info.key for info in repo.remote.list("blobs/")}
    assert {l.key for l in keep.layers} <= left and reused_key in left
    daemon.remove(name + ":new")
    assert pull(daemon, repo, name + ":new")["image"] == name + ":new"
