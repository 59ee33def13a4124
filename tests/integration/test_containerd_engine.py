"""The engine on Docker's containerd image store, where the daemon shares its network namespace: pushes
and pulls go through Docker's own registry client into the engine's loopback endpoint (_loopback),
instead of `docker save` / `docker load`. Docker 28 runs in a namespace of its own here, so the
`dogestry` command runs in it too (nsenter), as on a host whose daemon shares the host's namespace.

What must hold: the same results and the same remote content as the save/load path (so either path
can follow the other), only missing layers move, a corrupt layer never reaches Docker whole, and a
run killed at any point leaves no tag on incomplete data and no half-loaded image."""

import contextlib
import ctypes
import glob
import json
import os
import random
import signal
import subprocess
import time

import docker
import pytest

from ansible_runner import run_tasks
from docker_daemons import container_output
from dogestry_cli import DOGESTRY, MiB, cli_env, dogestry, netns_of_docker
from test_faults import assert_remote_whole
from test_modules_local import BASE, pull, push

ENDPOINT = "dogestry/engine"       # the name the engine's endpoint serves under (_loopback.ENGINE_NAME)
TRIALS = int(os.environ.get("DOGESTRY_FAULT_TRIALS", "5"))


def in_netns(*args):
    """`dogestry ARGS` as run inside Docker 28's network namespace (nsenter execs it: the same pid)."""
    return ["nsenter", "--net=/proc/%d/ns/net" % netns_of_docker("28"), "--", DOGESTRY] + [str(a) for a in args]


def dogestry_near(*args, check=True):
    proc = subprocess.run(in_netns(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          universal_newlines=True, env=cli_env(), timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("dogestry %s (in the daemon's namespace): exit %d\n%s%s"
                             % (" ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr))
    return proc


def near_json(*args):
    return json.loads(dogestry_near(*(args + ("--json",))).stdout)


def pushed_records(remote):
    return glob.glob(os.path.join(remote, "pushed", "sha256", "*"))


def transient_names(api):
    return [name for image in api.images() for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
            if "/%s" % ENDPOINT in name]


@contextlib.contextmanager
def in_daemon_namespace():
    """This thread (and what it starts: ansible-playbook, its modules) in Docker 28's network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    ours = os.open("/proc/self/ns/net", os.O_RDONLY)
    theirs = os.open("/proc/%d/ns/net" % netns_of_docker("28"), os.O_RDONLY)
    try:
        assert libc.setns(theirs, 0x40000000) == 0, os.strerror(ctypes.get_errno())     # CLONE_NEWNET
        yield
    finally:
        assert libc.setns(ours, 0x40000000) == 0, os.strerror(ctypes.get_errno())
        os.close(ours)
        os.close(theirs)


@pytest.fixture
def api28(docker28_host):
    client = docker.APIClient(base_url=docker28_host, version="auto")
    yield client
    client.close()


def test_push_through_docker_stores_what_the_save_path_stores_and_moves_only_new_layers(
        tmp_path, docker28_host, api28, build_image, name):
    data = os.urandom(2 * MiB)
    build_image(docker28_host, name + ":1", [{"/a.bin": data}, {"/v": b"1"}])
    near, saved = str(tmp_path / "near"), str(tmp_path / "saved")
    first = near_json("push", near, name + ":1", "--docker-host", docker28_host)
    # the same image through `docker save` (the engine outside the daemon's namespace cannot serve it)
    other = json.loads(dogestry("push", saved, name + ":1", "--docker-host", docker28_host, "--json").stdout)
    assert pushed_records(near) and not pushed_records(saved), "the loopback path records what Docker pushed"
    for key in ("image_id", "daemon_image_id", "manifest", "layers_transferred", "layers_skipped", "changed", "reason"):
        assert first[key] == other[key], (key, first, other)
    assert sorted(first) == sorted(other)
    assert len(first["layers_transferred"]) == 3 and first["changed"]
    assert_remote_whole(near, "pushed through Docker")
    again = near_json("push", near, name + ":1", "--docker-host", docker28_host)
    assert not again["changed"] and again["manifest"] == first["manifest"], again
    # a saved remote takes the loopback path's next push as a no-op too, and the other way round
    assert not near_json("push", saved, name + ":1", "--docker-host", docker28_host)["changed"]
    build_image(docker28_host, name + ":2", [{"/a.bin": data}, {"/v": b"1"}, {"/w": b"2"}])
    update = near_json("push", near, name + ":2", "--docker-host", docker28_host)
    assert len(update["layers_transferred"]) == 1 and len(update["layers_skipped"]) == 3, update
    assert update["bytes_transferred"] < 64 * 1024, update      # the new layer and the config, not the 2 MiB
    assert_remote_whole(near, "update pushed through Docker")
    assert not transient_names(api28), transient_names(api28)
    check = json.loads(dogestry_near("push", near, name + ":2", "--docker-host", docker28_host, "--json").stdout)
    assert not check["changed"]


def test_modules_through_docker_in_check_real_idempotent_rhythm(tmp_path, docker28_host, api28, build_image, name):
    """dogestry_push and dogestry_pull run by ansible-playbook on a host whose daemon shares its network
    namespace: check mode reports what the real run does, and a second run changes nothing."""
    remote = str(tmp_path / "remote")
    build_image(docker28_host, name + ":1", [BASE, {"/hello.txt": b"hello through docker\n"}],
                cmd=["/bin/busybox", "cat", "/hello.txt"])
    with in_daemon_namespace():
        pushed = run_tasks(tmp_path, [
            push(remote, [name + ":1"], "check", check_mode=True, docker_host=docker28_host),
            push(remote, [name + ":1"], "real", docker_host=docker28_host),
            push(remote, [name + ":1"], "idem_check", check_mode=True, docker_host=docker28_host),
            push(remote, [name + ":1"], "idem", docker_host=docker28_host),
        ])
    check, real = pushed["check"], pushed["real"]
    assert check["changed"] and real["changed"], pushed["_output"][-3000:]
    assert check["layers_transferred"] == real["layers_transferred"] and len(real["layers_transferred"]) == 3
    assert pushed_records(remote), "Docker pushed it (the save path writes no push records)"
    assert not pushed["idem_check"]["changed"] and not pushed["idem"]["changed"]
    api28.remove_image(name + ":1", force=True)
    with in_daemon_namespace():
        pulled = run_tasks(tmp_path, [
            pull(remote, name + ":1", "check", check_mode=True, docker_host=docker28_host),
            pull(remote, name + ":1", "real", docker_host=docker28_host),
            pull(remote, name + ":1", "idem_check", check_mode=True, docker_host=docker28_host),
            pull(remote, name + ":1", "idem", docker_host=docker28_host),
        ])
    assert pulled["check"]["changed"] and pulled["real"]["changed"], pulled["_output"][-3000:]
    assert pulled["check"]["layers_transferred"] == pulled["real"]["layers_transferred"]
    # the same sentence, in the tense of each: what would be downloaded, what was
    assert pulled["real"]["reason"] == pulled["check"]["reason"].replace("to download", "downloaded"), pulled
    info = api28.inspect_image(name + ":1")
    assert info["Id"] == pulled["real"]["daemon_image_id"] and "annotations" not in info["Descriptor"]
    assert not pulled["idem_check"]["changed"] and not pulled["idem"]["changed"]
    out = container_output(docker28_host, name + ":1")
    assert out == b"hello through docker\n"


def test_pull_through_docker_fetches_only_missing_layers_and_leaves_the_same_image(
        tmp_path, docker_host, docker28_host, api28, build_image, name):
    remote = str(tmp_path / "remote")
    data = os.urandom(MiB)
    build_image(docker_host, name + ":1", [{"/a.bin": data}, {"/msg": b"one\n"}],
                cmd=["/bin/busybox", "cat", "/msg"])
    first = json.loads(dogestry("push", remote, name + ":1", "--docker-host", docker_host, "--json").stdout)
    api = docker.APIClient(base_url=docker_host, version="auto")
    api.tag(name + ":1", name, "base")
    build_image(docker_host, name + ":2", [{"/a.bin": data}, {"/msg": b"one\n"}, {"/msg": b"two\n"}],
                cmd=["/bin/busybox", "cat", "/msg"])
    pushed = json.loads(dogestry("push", remote, name + ":2", "--docker-host", docker_host, "--json").stdout)
    try:
        cold = near_json("pull", remote, name + ":1", "--docker-host", docker28_host)
        # the busybox base may be on the daemon already (other tests share it); the rest is new
        assert cold["changed"] and cold["layers_transferred"][-2:] == first["layers_transferred"][-2:], cold
        info = api28.inspect_image(name + ":1")
        assert info["Id"] == cold["daemon_image_id"]
        assert "annotations" not in info["Descriptor"], "Docker pulled it (a load would have annotated it)"
        assert not near_json("pull", remote, name + ":1", "--docker-host", docker28_host)["changed"]
        update = near_json("pull", remote, name + ":2", "--docker-host", docker28_host)
        assert update["layers_transferred"] == pushed["layers_transferred"][-1:], (update, pushed)
        out = container_output(docker28_host, name + ":2")
        assert out == b"two\n"
        assert not transient_names(api28), transient_names(api28)
        # the same image ID the load path gives: a pull outside the namespace finds it present
        assert not json.loads(dogestry("pull", remote, name + ":2", "--docker-host", docker28_host,
                                       "--json").stdout)["changed"]
    finally:
        for tag in ("1", "2"):
            try:
                api28.remove_image("%s:%s" % (name, tag), force=True)
            except docker.errors.ImageNotFound:
                pass
        api.remove_image(name + ":base", force=True)


def test_pull_through_docker_refuses_a_corrupt_layer_and_registers_nothing(
        tmp_path, docker_host, docker28_host, api28, build_image, name):
    remote = str(tmp_path / "remote")
    build_image(docker_host, name + ":1", [{"/data": os.urandom(300000)}], isolated=True)
    pushed = json.loads(dogestry("push", remote, name + ":1", "--docker-host", docker_host, "--compression", "none",
                                 "--json").stdout)
    top = pushed["layers_transferred"][-1][7:]
    with open(glob.glob(os.path.join(remote, "blobs", "sha256", top[:2], top))[0], "r+b") as blob:
        blob.seek(150000)
        blob.write(b"X")
    failed = dogestry_near("pull", remote, name + ":1", "--docker-host", docker28_host, check=False)
    assert failed.returncode == 1 and "is corrupt" in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        api28.inspect_image(name + ":1")
    assert not transient_names(api28), transient_names(api28)


def killed_near(args, delay):
    """Run `dogestry ARGS` in the daemon's namespace, SIGKILL it after `delay` s; True if it was killed."""
    proc = subprocess.Popen(in_netns(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=cli_env())
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def test_killed_pushes_and_pulls_through_docker_leave_no_tag_on_incomplete_data(
        tmp_path, docker28_host, api28, build_image, name):
    ref = name + ":1"
    build_image(docker28_host, ref, [{"/a.bin": os.urandom(6 * MiB)}, {"/b.bin": os.urandom(6 * MiB)},
                                     {"/name.txt": name}], cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    expected = api28.inspect_image(ref)["RootFS"]["Layers"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    start = time.monotonic()
    dogestry_near("push", str(tmp_path / "baseline"), ref, "--docker-host", docker28_host)
    push_time = time.monotonic() - start
    killed = 0
    for trial in range(TRIALS):
        remote = str(tmp_path / ("remote-%d" % trial))
        delay = rng.uniform(0.05, push_time)
        why = "seed %d, trial %d, push killed after %.2fs of a %.2fs push" % (seed, trial, delay, push_time)
        killed += killed_near(["push", remote, ref, "--docker-host", docker28_host], delay)
        assert_remote_whole(remote, why)
        again = near_json("push", remote, ref, "--docker-host", docker28_host)
        assert again["image"] == ref, why
        assert_remote_whole(remote, why)
        assert list(json.loads(dogestry("tags", remote, "--json").stdout)["tags"]) == [ref], why
    assert not transient_names(api28), ("a later push drops the names a killed one left", transient_names(api28))
    remote = str(tmp_path / "baseline")
    api28.remove_image(ref, force=True)
    start = time.monotonic()
    dogestry_near("pull", remote, ref, "--docker-host", docker28_host)
    pull_time = time.monotonic() - start
    for trial in range(TRIALS):
        api28.remove_image(ref, force=True)
        delay = rng.uniform(0.05, pull_time)
        why = "seed %d, trial %d, pull killed after %.2fs of a %.2fs pull" % (seed, trial, delay, pull_time)
        killed += killed_near(["pull", remote, ref, "--docker-host", docker28_host], delay)
        try:
            present = api28.inspect_image(ref)
            assert present["RootFS"]["Layers"] == expected, why   # the pull was named: then it is whole
        except docker.errors.ImageNotFound:
            pass
        dogestry_near("pull", remote, ref, "--docker-host", docker28_host)
        assert api28.inspect_image(ref)["RootFS"]["Layers"] == expected, why
        out = container_output(docker28_host, ref)
        assert out.decode() == name, why
    assert killed >= TRIALS, "most trials must kill a running push or pull (seed %d)" % seed
