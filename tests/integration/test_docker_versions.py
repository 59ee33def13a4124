"""Both `docker save` layouts for real: Docker 20.10 (manifest.json + <id>/layer.tar) and Docker 26
(OCI layout). One controller feeds both daemons through `docker_host`, as the original -pullhosts did."""

import uuid

import docker
import pytest

from ansible_runner import run_tasks
from test_modules_local import BASE, pull, push


@pytest.fixture(params=["20.10 -> 26", "26 -> 20.10"])
def daemons(request, docker_host, docker26_host):
    return (docker_host, docker26_host) if request.param == "20.10 -> 26" else (docker26_host, docker_host)


def test_push_from_one_engine_pull_into_the_other_and_run(tmp_path, daemons, build_image):
    source, target = daemons
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(source, name + ":1", [BASE, {"/msg": b"across engines\n"}],
                           cmd=["/bin/busybox", "cat", "/msg"])
    remote = str(tmp_path / "remote")
    pushed = run_tasks(tmp_path, [push(remote, [name + ":1"], "push", docker_host=source)])["push"]
    assert pushed["changed"] and len(pushed["layers_transferred"]) == 3, pushed
    pulled = run_tasks(tmp_path, [pull(remote, name + ":1", "pull", docker_host=target),
                                  pull(remote, name + ":1", "again", docker_host=target)])
    try:
        assert pulled["pull"]["changed"] and pulled["pull"]["image_id"] == image_id, pulled["_output"][-3000:]
        # The target may hold the shared base already; the unique top layer must have moved.
        moved, kept = pulled["pull"]["layers_transferred"], pulled["pull"]["layers_skipped"]
        assert kept + moved == pushed["layers_transferred"]
        assert pushed["layers_transferred"][-1] in moved
        assert not pulled["again"]["changed"]
        client = docker.DockerClient(base_url=target)
        assert client.containers.run(name + ":1", network_mode="none", remove=True) == b"across engines\n"
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
