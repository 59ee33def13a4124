"""A tampered or damaged directory remote, and hostile option values, through the real modules and a real
dockerd: a tag never names the wrong image or unreadable data, nothing hangs, every failure is one line."""

import glob
import os
import shutil
import subprocess
import time

import docker
import pytest

from ansible_runner import run_tasks
from test_modules_local import BASE, pull, push, run_output, tags

VERIFY = "dogestry.dogestry.dogestry_verify"


def one_line(result):
    return result.get("failed") and "\n" not in result["msg"] and "Traceback" not in result["msg"]


def index_path(remote, image_id):
    return os.path.join(remote, "images", "sha256", image_id[7:])


def layer_blob(remote, oid):
    return glob.glob(os.path.join(remote, "blobs", "sha256", oid[7:9], oid[7:] + "*"))[0]


def test_a_tampered_image_index_entry_is_never_trusted(tmp_path, remote, engine, build_image, name):
    docker_host, api, env, _containerd = engine
    build_image(docker_host, name + "-a:1", [BASE, {"/who": "a\n"}], cmd=["/bin/busybox", "cat", "/who"])
    build_image(docker_host, name + "-b:1", [BASE, {"/who": "b\n"}])
    r = run_tasks(tmp_path, [push(remote, [name + "-a:1", name + "-b:1"], "push")], env=env)
    a = r["push"]["images"][0]["image_id"]
    b_manifest = r["push"]["images"][1]["manifest"]
    with open(index_path(remote, a), "w") as entry:        # A's index entry now names B's manifest
        entry.write(b_manifest + "\n")
    api.tag(name + "-a:1", name + "-a", "2")
    r = run_tasks(tmp_path, [
        tags("untag", remote=remote, state="absent", name=name + "-a", tag="1"),
        pull(remote, a[7:19], "by_id"),
        push(remote, [name + "-a:2"], "again"),
    ], env=env)
    assert one_line(r["by_id"]) and "does not name a readable manifest of that image" in r["by_id"]["msg"], r["by_id"]
    assert r["again"]["changed"] and r["again"]["images"][0]["manifest"] != b_manifest, r["again"]
    with open(index_path(remote, a)) as entry:              # the push put the right manifest back
        assert entry.read().strip() == r["again"]["images"][0]["manifest"]
    api.remove_image(name + "-a:1", force=True)
    api.remove_image(name + "-a:2", force=True)
    r = run_tasks(tmp_path, [pull(remote, name + "-a:2", "pull"), pull(remote, a[7:19], "by_id")], env=env)
    assert r["pull"]["image_id"] == a and r["by_id"]["image_id"] == a, r
    assert run_output(docker_host, name + "-a:2") == "a\n"


def test_a_corrupt_stored_layer_is_uploaded_again_not_reused(tmp_path, remote, engine, build_image, name):
    docker_host, api, env, _containerd = engine
    payload = os.urandom(300000)
    build_image(docker_host, name + ":1", [BASE, {"/data": payload}], cmd=["/bin/busybox", "md5sum", "/data"])
    expected = run_output(docker_host, name + ":1")
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")], env=env)
    image = r["push"]["images"][0]["image_id"]
    top = r["push"]["images"][0]["layers_transferred"][-1]
    with open(layer_blob(remote, top), "wb") as blob:
        blob.write(b"junk!")
    for path in [index_path(remote, image)] + glob.glob(os.path.join(remote, "manifests", "sha256", "*")):
        os.unlink(path)
    shutil.rmtree(os.path.join(remote, "repositories"))
    for tag in ("2", "3"):
        api.tag(name + ":1", name, tag)
    r = run_tasks(tmp_path, [push(remote, [name + ":2"], "push"), push(remote, [name + ":3"], "again"),
                             {VERIFY: {"remote": remote}, "register": "verify"}], env=env)
    assert r["push"]["images"][0]["layers_repaired"] == [top], r["push"]
    assert top in r["push"]["images"][0]["layers_transferred"]
    assert not r["verify"].get("failed") and r["verify"]["problems"] == [], r["verify"]
    assert glob.glob(os.path.join(remote, "quarantine", "*", "blobs", "sha256", top[7:9], top[7:] + "*"))
    for tag in ("1", "2", "3"):
        api.remove_image("%s:%s" % (name, tag), force=True)
    r = run_tasks(tmp_path, [pull(remote, name + ":3", "pull")], env=env)
    assert r["pull"]["changed"] and run_output(docker_host, name + ":3") == expected


def test_verify_reports_then_repairs_and_the_next_push_restores(tmp_path, remote, docker_host, build_image, name):
    build_image(docker_host, name + ":1", [BASE, {"/data": os.urandom(200000)}, {"/more": os.urandom(100000)}])
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")])
    damaged = r["push"]["images"][0]["layers_transferred"][-1]
    damaged_key = os.path.relpath(layer_blob(remote, damaged), remote)
    with open(layer_blob(remote, damaged), "r+b") as blob:     # same size, one flipped byte
        blob.seek(100)
        byte = blob.read(1)
        blob.seek(100)
        blob.write(bytes([byte[0] ^ 1]))
    r = run_tasks(tmp_path, [
        {VERIFY: {"remote": remote}, "register": "check"},
        {VERIFY: {"remote": remote, "sample": 0}, "register": "sampled"},
        {VERIFY: {"remote": remote, "repair": True}, "register": "dry", "check_mode": True},
        {VERIFY: {"remote": remote, "repair": True}, "register": "repair"},
        {VERIFY: {"remote": remote}, "register": "after"},
        push(remote, [name + ":1"], "push"),
        {VERIFY: {"remote": remote}, "register": "final"},
    ])
    assert one_line(r["check"]) and [p["kind"] for p in r["check"]["problems"]] == ["corrupt"], r["check"]
    assert r["check"]["problems"][0]["key"] == damaged_key
    assert not r["sampled"].get("failed") and r["sampled"]["checked"]["layers_read"] == 0    # size alone: looks fine
    assert r["dry"]["changed"] and not r["dry"].get("failed") and list(r["dry"]["moved"]) == [damaged_key]
    assert r["repair"]["changed"] and list(r["repair"]["moved"]) == [damaged_key]
    assert one_line(r["after"]) and r["after"]["problems"][0]["kind"] == "missing"
    assert r["push"]["changed"] and damaged in r["push"]["images"][0]["layers_transferred"], r["push"]
    assert not r["final"].get("failed") and r["final"]["checked"]["layers"] == 4, r["final"]


def test_tags_listing_reports_a_broken_tag_and_lists_the_rest(tmp_path, remote, docker_host, build_image, name):
    build_image(docker_host, name + ":ok", [BASE, {"/v": "ok"}])
    build_image(docker_host, name + ":broken", [BASE, {"/v": "broken"}])
    r = run_tasks(tmp_path, [push(remote, [name + ":ok", name + ":broken"], "push")])
    os.unlink(os.path.join(remote, "manifests", "sha256", r["push"]["images"][1]["manifest"][7:]))
    r = run_tasks(tmp_path, [tags("listed", remote=remote)])
    assert list(r["listed"]["tags"]) == [name + ":ok"] and list(r["listed"]["broken"]) == [name + ":broken"]
    assert "1 broken: %s:broken" % name in r["listed"]["msg"]


def test_a_fifo_or_directory_in_place_of_an_object_fails_fast(tmp_path, remote, docker_host, build_image, name):
    build_image(docker_host, name + ":1", [BASE, {"/v": "fifo"}])
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")])
    layer = r["push"]["images"][0]["layers_transferred"][-1]
    tag = os.path.join(remote, "repositories", name, "_tags", "1")
    os.unlink(tag)
    os.mkfifo(tag)
    blob = layer_blob(remote, layer)
    os.unlink(blob)
    os.mkdir(blob)
    docker.APIClient(base_url=docker_host).remove_image(name + ":1", force=True)
    started = time.time()
    image_id = r["push"]["images"][0]["image_id"]
    r = run_tasks(tmp_path, [pull(remote, name + ":1", "fifo"), pull(remote, image_id, "directory")])
    assert time.time() - started < 120
    assert one_line(r["fifo"]) and "is not a regular file (a FIFO)" in r["fifo"]["msg"], r["fifo"]
    assert one_line(r["directory"]) and "missing" in r["directory"]["msg"], r["directory"]


def test_writes_never_follow_a_symlinked_directory(tmp_path, remote, docker_host, build_image, name):
    build_image(docker_host, name + ":1", [BASE, {"/v": "symlink"}])
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(os.path.join(remote, "blobs"))
    os.symlink(str(outside), os.path.join(remote, "blobs", "sha256"))
    r = run_tasks(tmp_path, [push(remote, [name + ":1"], "push")])
    assert one_line(r["push"]) and "symlinked directory" in r["push"]["msg"], r["push"]
    assert list(outside.iterdir()) == []
    assert not os.path.exists(os.path.join(remote, "repositories"))


@pytest.mark.parametrize("module, params, message", [
    ("dogestry_tags", {"remote": "https://[::1"}, "is not a valid URL (Invalid IPv6 URL)"),
    ("dogestry_tags", {"remote": "https://registry.example:99999/x/"}, "Port out of range"),
    ("dogestry_tags", {"remote": "/srv/dog\u0000estry"}, "NUL byte"),
    ("dogestry_pull", {"remote": "/tmp", "image": "x:1", "docker_host": "http://[::1"}, "Invalid IPv6 URL"),
    ("dogestry_prune", {"remote": "/tmp", "grace_period": "0"}, "grace period of 0s is too short: at least 60s"),
    ("dogestry_push", {"remote": "/tmp/dogestry-never", "images": ["sha256:0123456789ab"]}, "is an image ID"),
])
def test_hostile_option_values_are_one_line_errors(tmp_path, docker_host, module, params, message):
    r = run_tasks(tmp_path, [{"dogestry.dogestry." + module: params, "register": "r"}])
    assert one_line(r["r"]) and message in r["r"]["msg"], r["r"]


def test_push_by_image_id_prefix_is_refused(tmp_path, remote, docker_host, build_image, name):
    image = build_image(docker_host, name + ":1", [BASE, {"/v": "id"}])
    r = run_tasks(tmp_path, [push(remote, [image[7:19]], "push")])
    assert one_line(r["push"]) and "is an image ID prefix, not a name" in r["push"]["msg"], r["push"]
    assert not os.path.exists(os.path.join(remote, "repositories"))


def test_a_full_filesystem_while_spooling_is_one_line_and_leaves_no_tag(tmp_path, docker_host, build_image, name):
    build_image(docker_host, name + ":1", [BASE, {"/big": os.urandom(3 << 20)}])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        r = run_tasks(tmp_path, [push(str(small / "remote"), [name + ":1"], "push", compression="none")])
        assert one_line(r["push"]) and "No space left on device" in r["push"]["msg"], r["push"]
        assert not os.path.exists(str(small / "remote" / "repositories"))
        assert os.listdir(str(small / "remote" / ".staging")) == []     # the spool is cleaned up
    finally:
        subprocess.run(["umount", str(small)], check=True)
