"""Every engine against every other: Docker 20.10 (classic store, manifest.json + <id>/layer.tar), Docker 26
(classic store, OCI layout) and Docker 28 on the containerd image store (Docker 29's default: image IDs are
manifest digests, `docker save` exports compressed blobs). One controller feeds them all through
`docker_host`, as the original -pullhosts did."""

import uuid

import docker
import pytest

from ansible_runner import run_tasks
from docker_daemons import container_output
from test_modules_local import BASE, pull, push

ENGINES = {"20.10": "docker_host", "26": "docker26_host", "28-containerd": "docker28_host"}
PAIRS = [(a, b) for a in ENGINES for b in ENGINES if a != b]


@pytest.fixture(params=PAIRS, ids=["%s->%s" % pair for pair in PAIRS])
def daemons(request):
    return tuple(request.getfixturevalue(ENGINES[engine]) for engine in request.param)


def run(host, image):
    return container_output(host, image)


def test_push_from_one_engine_pull_into_the_other_and_run(tmp_path, daemons, build_image):
    source, target = daemons
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(source, name + ":1", [BASE, {"/msg": b"across engines\n"}], cmd=["/bin/busybox", "cat", "/msg"])
    remote = str(tmp_path / "remote")
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "push", docker_host=source),
                             push(remote, [name + ":1"], "again", docker_host=source)])
    pushed = r["push"]
    assert pushed["changed"] and len(pushed["layers_transferred"]) == 3, r["_output"][-3000:]
    assert not r["again"]["changed"], r["again"]          # no-op push, on either store
    pulled = run_tasks(tmp_path, [pull(remote, name + ":1", "pull", docker_host=target),
                                  pull(remote, name + ":1", "again", docker_host=target)])
    try:
        assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == pushed["images"][0]["image_id"], pulled["_output"][-3000:]
        # The target may hold the shared base already; the unique top layer must have moved.
        moved, kept = pulled["pull"]["layers_transferred"], pulled["pull"]["layers_skipped"]
        assert sorted(kept + moved) == sorted(pushed["layers_transferred"])
        assert pushed["layers_transferred"][-1] in moved
        assert not pulled["again"]["changed"], pulled["again"]
        info = docker.APIClient(base_url=target).inspect_image(name + ":1")
        assert info["Id"] == pulled["pull"]["daemon_image_id"]
        assert run(target, name + ":1") == b"across engines\n"
    finally:
        docker.APIClient(base_url=target).remove_image(name + ":1", force=True)


def test_oci_layout_push_reuses_layers_by_blob_name(tmp_path, docker26_host, build_image):
    """On Docker >= 25 a layer the remote has is recognised by its blob name and not hashed again."""
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker26_host, name + ":1", [BASE, {"/v": b"1"}])
    build_image(docker26_host, name + ":2", [BASE, {"/v": b"2"}])
    remote = str(tmp_path / "remote")
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "one", docker_host=docker26_host),
                             push(remote, [name + ":2"], "two", docker_host=docker26_host)])
    assert len(r["one"]["layers_transferred"]) == 3
    assert len(r["two"]["layers_transferred"]) == 1 and len(r["two"]["layers_skipped"]) == 2


def test_containerd_store_one_layer_update_moves_one_layer(tmp_path, docker_host, docker28_host, build_image):
    """After a pull, the containerd store holds the image's layers as blobs dogestry can name: an update
    that adds one layer loads only that layer, and the image IDs are the OCI manifest digests."""
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker_host, name + ":1", [BASE, {"/v": b"1"}])
    remote = str(tmp_path / "remote")
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "v1", docker_host=docker_host),
                             pull(remote, name + ":1", "pull1", docker_host=docker28_host)])
    assert r["pull1"]["changed"] and r["v1"]["layers_transferred"][-1] in r["pull1"]["layers_transferred"], r["pull1"]
    api = docker.APIClient(base_url=docker_host)
    api.tag(name + ":1", name, "base")
    build_image(docker_host, name + ":2", [BASE, {"/v": b"1"}, {"/w": b"2"}], cmd=["/bin/busybox", "cat", "/w"])
    r = run_tasks(tmp_path, [push(remote, [name + ":2"], "v2", docker_host=docker_host),
                             pull(remote, name + ":2", "pull2", docker_host=docker28_host),
                             push(remote, [name + ":2"], "repush", docker_host=docker28_host)])
    try:
        assert len(r["v2"]["layers_transferred"]) == 1, r["v2"]            # the same first layers, one new
        assert r["pull2"]["layers_transferred"] == r["v2"]["layers_transferred"], r["pull2"]
        assert not r["repush"]["changed"], r["repush"]      # the containerd store knows it by manifest digest
        assert run(docker28_host, name + ":2") == b"2"
    finally:
        for tag in ("1", "2"):
            docker.APIClient(base_url=docker28_host).remove_image("%s:%s" % (name, tag), force=True)
        api.remove_image(name + ":base", force=True)


def test_containerd_store_refuses_a_corrupt_layer_and_keeps_nothing(tmp_path, docker_host, docker28_host, build_image):
    import glob
    import os
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker_host, name + ":1", [BASE, {"/data": os.urandom(100000)}])
    remote = str(tmp_path / "remote")
    pushed = run_tasks(tmp_path, [push(remote, [name + ":1"], "push", docker_host=docker_host,
                                       compression="none")])["push"]
    top = pushed["layers_transferred"][-1][7:]
    with open(glob.glob(os.path.join(remote, "blobs", "sha256", top[:2], top))[0], "r+b") as blob:
        blob.seek(5000)
        blob.write(b"X")
    r = run_tasks(tmp_path, [pull(remote, name + ":1", "pull", docker_host=docker28_host)])
    assert r["pull"]["failed"] and "is corrupt" in r["pull"]["msg"] and "\n" not in r["pull"]["msg"], r["pull"]
    api = docker.APIClient(base_url=docker28_host)
    assert not [i for i in api.images(all=True) if name + ":1" in (i.get("RepoTags") or [])]
    with pytest.raises(docker.errors.ImageNotFound):
        api.inspect_image(r["pull"].get("daemon_image_id") or name + ":1")
