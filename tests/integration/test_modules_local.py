"""dogestry_push / dogestry_pull / dogestry_tags through real ansible-playbook runs, a real dockerd
and a local-directory remote: check mode -> real -> idempotent, as community.docker's targets do."""

import glob
import os
import time
import uuid

import docker
import pytest

from ansible_runner import run_tasks
from docker_daemons import container_output

BASE = {"/etc/base.txt": b"base layer shared by all test images\n" * 100}


TASK_KEYWORDS = ("check_mode", "diff")


def task(module, register, params):
    keywords = {key: params.pop(key) for key in TASK_KEYWORDS if key in params}
    return dict({"dogestry.dogestry." + module: params, "register": register}, **keywords)


def push(remote, images, register, **extra):
    return task("dogestry_push", register, dict(extra, remote=remote, images=images))


def pull(remote, image, register, **extra):
    return task("dogestry_pull", register, dict(extra, remote=remote, image=image))


def tags(register, **params):
    return task("dogestry_tags", register, params)


def blob_files(remote):
    return sorted(glob.glob(os.path.join(remote, "blobs", "sha256", "*", "*")))


def run_output(host, image):
    return container_output(host, image).decode()


@pytest.fixture
def api(docker_host):
    client = docker.APIClient(base_url=docker_host, version="auto")
    yield client
    client.close()


def test_push_remove_pull_run_in_check_real_idempotent_rhythm(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, _containerd = engine
    image_id = build_image(docker_host, name + ":1", [BASE, {"/hello.txt": b"hello from dogestry\n"}],
                           cmd=["/bin/busybox", "cat", "/hello.txt"])
    pushed = run_tasks(tmp_path, [
        push(remote, [name + ":1"], "check", check_mode=True),
        push(remote, [name + ":1"], "real"),
        push(remote, [name + ":1"], "idem_check", check_mode=True),
        push(remote, [name + ":1"], "idem"),
    ], env=env)
    check, real = pushed["check"], pushed["real"]
    assert check["changed"] and real["changed"], pushed["_output"]
    assert check["layers_transferred"] == real["layers_transferred"]
    assert len(real["layers_transferred"]) == 3       # busybox base + BASE + hello
    assert real["images"][0]["daemon_image_id"] == image_id     # the config digest on the classic store
    assert real["bytes_transferred"] > 0
    assert not pushed["idem_check"]["changed"] and not pushed["idem"]["changed"]
    assert pushed["idem"]["layers_skipped"] == real["layers_transferred"]
    assert len(blob_files(remote)) == 4               # 3 layers + config

    api.remove_image(name + ":1", force=True)
    pulled = run_tasks(tmp_path, [
        pull(remote, name + ":1", "check", check_mode=True),
        pull(remote, name + ":1", "real"),
        pull(remote, name + ":1", "idem_check", check_mode=True),
        pull(remote, name + ":1", "idem"),
    ], env=env)
    assert pulled["check"]["changed"] and pulled["real"]["changed"], pulled["_output"]
    assert pulled["check"]["layers_transferred"] == pulled["real"]["layers_transferred"]
    assert pulled["real"]["image_id"] == real["images"][0]["image_id"]
    assert api.inspect_image(name + ":1")["Id"] == pulled["real"]["daemon_image_id"]
    assert not pulled["idem_check"]["changed"] and not pulled["idem"]["changed"]
    assert run_output(docker_host, name + ":1") == "hello from dogestry\n"


def test_check_mode_changes_nothing(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, _containerd = engine
    build_image(docker_host, name + ":1", [BASE])
    result = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], check=True, env=env)
    assert result["push"]["changed"]
    assert not os.path.exists(remote)
    run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], env=env)
    api.remove_image(name + ":1", force=True)
    result = run_tasks(tmp_path, [pull(remote, name + ":1", "pull")], check=True, env=env)
    # (on the containerd store, layers that images dogestry loaded before hold may all be skipped)
    assert result["pull"]["changed"] and len(result["pull"]["layers_transferred"] + result["pull"]["layers_skipped"]) == 2
    assert not api.images(name=name)


def test_shared_base_moves_only_the_new_layer(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, containerd = engine
    build_image(docker_host, name + ":1", [BASE, {"/app": b"version one\n"}])
    build_image(docker_host, name + ":2", [BASE, {"/app": b"version two\n"}])
    first = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], env=env)["push"]
    blobs_before = set(blob_files(remote))
    second = run_tasks(tmp_path, [push(remote, [name + ":2"], "push")], env=env)["push"]
    assert len(second["layers_transferred"]) == 1
    assert len(second["layers_skipped"]) == 2
    assert set(second["layers_skipped"]) <= set(first["layers_transferred"])
    new_blobs = set(blob_files(remote)) - blobs_before
    new_layer = second["layers_transferred"][0].split(":")[1]
    assert {os.path.basename(path).split(".")[0] for path in new_blobs} == {
        new_layer, second["images"][0]["image_id"].split(":")[1]}

    api.remove_image(name + ":2", force=True)       # :1 keeps the shared layers in the daemon
    pulled = run_tasks(tmp_path, [pull(remote, name + ":2", "pull")], env=env)["pull"]
    if containerd:
        # :1 was built here, so its blobs are compressed in the content store and cannot be left out;
        # only layers of images dogestry loaded on this (shared) daemon are skipped.
        assert second["layers_transferred"][0] in pulled["layers_transferred"]
        assert sorted(pulled["layers_transferred"] + pulled["layers_skipped"]) == sorted(
            second["layers_transferred"] + second["layers_skipped"])
    else:
        assert pulled["layers_transferred"] == second["layers_transferred"]
        assert len(pulled["layers_skipped"]) == 2
    assert api.inspect_image(name + ":2")["Id"] == pulled["daemon_image_id"]
    assert pulled["image_id"] == second["images"][0]["image_id"]


@pytest.mark.parametrize("encoding", ["lz4", "none"])
def test_flipped_byte_fails_the_pull_and_leaves_no_image(tmp_path, engine, build_image, name, remote, encoding):
    docker_host, api, env, _containerd = engine
    image_id = build_image(docker_host, name + ":1", [BASE, {"/big.bin": os.urandom(300000)}])
    pushed = run_tasks(tmp_path, [push(remote, [name + ":1"], "push", compression=encoding)], env=env)["push"]
    top = pushed["layers_transferred"][-1].split(":")[1]       # the random layer no other image has
    (blob,) = glob.glob(os.path.join(remote, "blobs", "sha256", top[:2], top + "*"))
    with open(blob, "r+b") as handle:
        handle.seek(os.path.getsize(blob) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    api.remove_image(name + ":1", force=True)
    result = run_tasks(tmp_path, [pull(remote, name + ":1", "pull")], env=env)["pull"]
    assert result["failed"]
    assert "corrupt" in result["msg"] and "\n" not in result["msg"]
    assert not api.images(name=name)
    with pytest.raises(docker.errors.ImageNotFound):
        api.inspect_image(image_id)


def test_tags_list_add_move_remove(tmp_path, docker_host, build_image, name, remote):
    one = build_image(docker_host, name + ":1", [BASE, {"/v": b"1"}])
    two = build_image(docker_host, name + ":2", [BASE, {"/v": b"2"}])
    run_tasks(tmp_path, [push(remote, [name + ":1", name + ":2"], "push")])
    r = run_tasks(tmp_path, [
        tags("listed", remote=remote, name=name),
        tags("add_check", remote=remote, state="present", name=name, tag="latest", image=name + ":1", check_mode=True),
        tags("add", remote=remote, state="present", name=name, tag="latest", image=name + ":1"),
        tags("add_again", remote=remote, state="present", name=name, tag="latest", image=name + ":1"),
        tags("move", remote=remote, state="present", name=name, tag="latest", image=two[7:19]),
        tags("filtered", remote=remote, name=name, tag="l*"),
        tags("remove", remote=remote, state="absent", name=name, tag="latest"),
        tags("remove_again", remote=remote, state="absent", name=name, tag="latest"),
        tags("after", remote=remote, name=name),
    ], diff=True)
    assert set(r["listed"]["tags"]) == {name + ":1", name + ":2"}
    assert r["listed"]["tags"][name + ":1"]["image_id"] == one
    assert r["add_check"]["changed"] and r["add_check"]["tags"] == r["add"]["tags"]
    assert r["add"]["changed"] and not r["add_again"]["changed"]
    assert r["add"]["diff"]["before"]["tags"] == {}
    assert r["add"]["tags"][name + ":latest"]["image_id"] == one
    assert r["move"]["changed"] and r["move"]["tags"][name + ":latest"]["image_id"] == two
    assert r["move"]["actions"] == ["Tagged %s:latest -> %s (was %s)" % (name, two[:19], one[:19])]
    assert list(r["filtered"]["tags"]) == [name + ":latest"]
    assert r["remove"]["changed"] and not r["remove_again"]["changed"]
    assert set(r["after"]["tags"]) == {name + ":1", name + ":2"}     # data of other tags untouched


def test_tags_check_mode_writes_nothing(tmp_path, docker_host, build_image, name, remote):
    build_image(docker_host, name + ":1", [BASE])
    run_tasks(tmp_path, [push(remote, [name + ":1"], "push")])
    r = run_tasks(tmp_path, [tags("add", remote=remote, state="present", name=name, tag="x", image=name + ":1"),
                             tags("rm", remote=remote, state="absent", name=name, tag="1")], check=True)
    assert r["add"]["changed"] and r["rm"]["changed"]
    listed = run_tasks(tmp_path, [tags("l", remote=remote, name=name)])["l"]
    assert set(listed["tags"]) == {name + ":1"}


def test_names_with_registry_port_and_nested_prefixes_round_trip(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, _containerd = engine
    outer = "registry.example.com:5000/%s" % name
    inner = outer + "/sub"
    build_image(docker_host, outer + ":1", [BASE, {"/which": b"outer"}])
    build_image(docker_host, inner + ":1", [BASE, {"/which": b"inner"}])
    pushed = run_tasks(tmp_path, [push(remote, [outer + ":1", inner + ":1"], "push")], env=env)["push"]["images"]
    a, b = pushed[0]["image_id"], pushed[1]["image_id"]
    listed = run_tasks(tmp_path, [tags("l", remote=remote, name="registry.example.com:5000/*")])["l"]["tags"]
    assert {k: v["image_id"] for k, v in listed.items()} == {outer + ":1": a, inner + ":1": b}
    api.remove_image(outer + ":1", force=True)
    api.remove_image(inner + ":1", force=True)
    r = run_tasks(tmp_path, [pull(remote, outer + ":1", "a"), pull(remote, inner + ":1", "b")], env=env)
    assert (r["a"]["image_id"], r["b"]["image_id"]) == (a, b)
    assert api.inspect_image(inner + ":1")["Id"] == r["b"]["daemon_image_id"]


def test_pull_by_id_prefix_and_unknown_images(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, _containerd = engine
    build_image(docker_host, name + ":1", [BASE, {"/n": b"by id"}])
    image_id = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], env=env)["push"]["images"][0]["image_id"]
    api.remove_image(name + ":1", force=True)
    r = run_tasks(tmp_path, [
        pull(remote, image_id[7:19], "by_id"),
        pull(remote, "sha256:" + "0" * 64, "unknown_id"),
        pull(remote, name + ":nope", "unknown_tag"),
    ], env=env)
    assert r["by_id"]["changed"] and r["by_id"]["image_id"] == image_id and r["by_id"]["image"] is None
    loaded = api.inspect_image(r["by_id"]["daemon_image_id"])["RootFS"]["Layers"]
    assert sorted(loaded) == sorted(r["by_id"]["layers_transferred"] + r["by_id"]["layers_skipped"])
    assert r["unknown_id"]["failed"] and "no image with ID" in r["unknown_id"]["msg"]
    assert r["unknown_tag"]["failed"] and "no such tag" in r["unknown_tag"]["msg"]


@pytest.mark.parametrize("module, params, expected", [
    ("dogestry_pull", {"remote": "relative/dir", "image": "x:1"}, "relative path"),
    ("dogestry_pull", {"remote": "ftp://host/x", "image": "x:1"}, "unsupported scheme"),
    ("dogestry_pull", {"remote": "/nonexistent/dogestry", "image": "x:1"}, "not a dogestry remote"),
    ("dogestry_pull", {"remote": "/tmp", "image": "UPPER:case"}, "not a valid image name"),
    ("dogestry_pull", {"remote": "/tmp", "image": "x:1", "docker_host": "unix:///nonexistent.sock"},
     "cannot reach the Docker daemon"),
    ("dogestry_push", {"remote": "/tmp/dogestry-never", "images": ["no-such-image:1"]}, "not found in the Docker daemon"),
    ("dogestry_tags", {"remote": "/nonexistent/dogestry"}, "not a dogestry remote"),
    ("dogestry_tags", {"remote": "/tmp", "state": "present", "name": "a", "tag": "b"}, "image"),
    ("dogestry_tags", {"remote": "/tmp", "state": "absent", "name": "app", "tag": "2013*"}, "needs an exact name"),
    ("dogestry_prune", {"remote": "/tmp", "grace_period": "soon"}, "not a duration"),
    ("dogestry_signed_url", {"remote": "/tmp", "image": "app:1"}, "need an s3:// remote"),
])
def test_user_errors_give_one_line_messages(tmp_path, docker_host, module, params, expected):
    result = run_tasks(tmp_path, [task(module, "r", dict(params))])["r"]
    assert result["failed"], module
    assert expected in result["msg"] and "\n" not in result["msg"], result["msg"]
    assert "Traceback" not in result["msg"]


def test_unwritable_remote_fails_cleanly(tmp_path, docker_host, build_image, name):
    build_image(docker_host, name + ":1", [BASE])
    result = run_tasks(tmp_path, [push("/etc/hostname/remote", [name + ":1"], "r")])["r"]
    assert result["failed"] and "/etc/hostname/remote" in result["msg"] and "\n" not in result["msg"], result["msg"]


def test_pull_from_a_plain_static_web_server(tmp_path, engine, build_image, name, remote):
    """A remote directory served read-only by any static HTTP server is a pull remote."""
    import subprocess
    import sys
    import urllib.request
    from conftest import free_port, wait_for
    docker_host, api, env, _containerd = engine
    build_image(docker_host, name + ":1", [BASE, {"/web": b"served statically\n"}], cmd=["/bin/busybox", "cat", "/web"])
    image_id = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], env=env)["push"]["images"][0]["image_id"]
    api.remove_image(name + ":1", force=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", remote,
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = "http://127.0.0.1:%d/" % port
        wait_for(lambda: urllib.request.urlopen(url + "dogestry.json", timeout=2).status == 200, 30, "http.server")
        r = run_tasks(tmp_path, [pull(url, name + ":1", "pull"), pull(url, name + ":1", "again"),
                                 tags("listing", remote=url)], env=env)
    finally:
        server.terminate()
        server.wait(10)
    assert r["pull"]["changed"] and r["pull"]["image_id"] == image_id, r["_output"][-2000:]
    assert not r["again"]["changed"]
    assert r["listing"]["failed"] and "listable" in r["listing"]["msg"], r["listing"]["msg"]
    assert run_output(docker_host, name + ":1") == "served statically\n"


def test_two_tags_of_one_image_in_one_push_upload_once(tmp_path, engine, build_image, name, remote):
    docker_host, api, env, _containerd = engine
    build_image(docker_host, name + ":1", [BASE, {"/v": b"twice"}])
    api.tag(name + ":1", name, "latest")
    r = run_tasks(tmp_path, [push(remote, [name + ":1", name + ":latest"], "check", check_mode=True),
                             push(remote, [name + ":1", name + ":latest"], "real"),
                             tags("listed", remote=remote, name=name)], env=env)
    assert not r["real"].get("failed"), r["real"]
    image_id = r["real"]["images"][0]["image_id"]
    try:
        for result in (r["check"], r["real"]):
            first, second = result["images"]
            assert len(first["layers_transferred"]) == 3 and second["layers_transferred"] == []
            assert "pushed as %s:1" % name in second["reason"]
        assert r["real"]["images"][1]["manifest"] == r["real"]["images"][0]["manifest"]
        assert {k: v["image_id"] for k, v in r["listed"]["tags"].items()} == {name + ":1": image_id,
                                                                              name + ":latest": image_id}
    finally:
        api.remove_image(name + ":latest", force=True)


def test_prune_deletes_exactly_the_unreferenced_data(tmp_path, docker_host, remote, build_image):
    """Files are backdated two hours (S3 timestamps cannot be), so a one-hour grace period lets them go."""
    name = "dogestry-test-%s" % uuid.uuid4().hex[:8]
    build_image(docker_host, name + ":keep", [BASE, {"/v": b"keep"}])
    gone = build_image(docker_host, name + ":gone", [BASE, {"/v": b"gone"}])
    pushed = run_tasks(tmp_path, [
        push(remote, [name + ":keep", name + ":gone"], "push"),
        tags("untag", remote=remote, state="absent", name=name, tag="gone"),
        {"dogestry.dogestry.dogestry_prune": {"remote": remote}, "register": "young"},
    ])
    assert not pushed["young"]["changed"] and pushed["young"]["spared_young"] == 4, pushed["young"]  # default: 24h
    two_hours_ago = time.time() - 7200
    for dirpath, _dirs, files in os.walk(remote):
        for f in files:
            os.utime(os.path.join(dirpath, f), (two_hours_ago, two_hours_ago))
    r = run_tasks(tmp_path, [
        {"dogestry.dogestry.dogestry_prune": {"remote": remote, "grace_period": "1h"}, "register": "check",
         "check_mode": True},
        {"dogestry.dogestry.dogestry_prune": {"remote": remote, "grace_period": "3600"}, "register": "real"},
        {"dogestry.dogestry.dogestry_prune": {"remote": remote, "grace_period": "60m"}, "register": "again"},
        tags("left", remote=remote),
    ])
    r["push"] = pushed["push"]
    assert r["check"]["changed"] and r["check"]["deleted"] == r["real"]["deleted"]
    deleted = r["real"]["deleted"]
    gone_layer = r["push"]["images"][1]["layers_transferred"][-1][7:]
    assert [key.split("/")[-1].split(".")[0] for key in deleted["blobs"]] == sorted([gone_layer, gone[7:]])
    assert len(deleted["manifests"]) == 1 and len(deleted["image_index"]) == 1
    assert r["real"]["deleted_bytes"] == r["check"]["bytes"] > 0
    assert not r["again"]["changed"]
    assert list(r["left"]["tags"]) == [name + ":keep"]
    docker.APIClient(base_url=docker_host).remove_image(name + ":keep", force=True)
    pulled = run_tasks(tmp_path, [pull(remote, name + ":keep", "pull")])
    assert pulled["pull"]["changed"] and not pulled["pull"].get("failed"), pulled["pull"]
