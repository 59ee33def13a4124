"""Pushes and pulls killed (SIGKILL) at random points, on both image stores: the remote never shows a
tag whose data is incomplete, Docker never holds a half-loaded image, and a re-run finishes. The
same for an accelerator killed while `docker push` sends through it.

Each trial picks its kill time from a seeded generator (the seed is in every failure message);
DOGESTRY_FAULT_TRIALS sets the trials per test (default 5, with one more that is never killed)."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from dogestry_cli import DOGESTRY, MiB, cli_env, docker, dogestry, netns_of_docker
from s3_faults import FaultProxy

TRIALS = int(os.environ.get("DOGESTRY_FAULT_TRIALS", "5"))


def killed_at(args, delay):
    """Run `dogestry ARGS`, SIGKILL it after `delay` seconds (if still running); True if it was killed."""
    proc = subprocess.Popen([DOGESTRY] + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=cli_env())
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def timed(args):
    start = time.monotonic()
    dogestry(*args)
    return time.monotonic() - start


def assert_remote_whole(remote, why):
    """Every tag names a manifest whose config and layers are all there, whole (dogestry verify)."""
    tags = dogestry("tags", remote, "--json", check=False)
    if tags.returncode != 0:
        assert "not a dogestry remote yet" in tags.stderr, (why, tags.stderr)
        return
    listed = json.loads(tags.stdout)
    assert not listed["broken"], (why, listed["broken"])
    checked = dogestry("verify", remote, "--json", check=False)
    assert checked.returncode == 0, (why, checked.stdout, checked.stderr)


@pytest.fixture
def image(engine, build_image, name):
    host, _client, _env, _containerd = engine
    ref = name + ":1"
    build_image(host, ref, [{"/a.bin": os.urandom(6 * MiB)}, {"/b.bin": os.urandom(6 * MiB)}, {"/name.txt": name}],
                cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    return host, ref


def test_killed_pushes_never_leave_a_tag_on_incomplete_data(tmp_path, image):
    host, ref = image
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    baseline = timed(["push", str(tmp_path / "baseline"), ref, "--docker-host", host])
    killed = 0
    for trial in range(TRIALS):
        remote = str(tmp_path / ("remote-%d" % trial))
        delay = rng.uniform(0.05, baseline)
        why = "seed %d, trial %d, killed after %.2fs of a %.2fs push" % (seed, trial, delay, baseline)
        killed += killed_at(["push", remote, ref, "--docker-host", host], delay)
        assert_remote_whole(remote, why)
        again = json.loads(dogestry("push", remote, ref, "--docker-host", host, "--json").stdout)
        assert again["image"] == ref, why
        assert_remote_whole(remote, why)
        listed = json.loads(dogestry("tags", remote, "--json").stdout)["tags"]
        assert list(listed) == [ref], why
    assert killed >= TRIALS // 2, "most trials must kill a running push (seed %d)" % seed


def test_an_accelerator_killed_during_docker_push_leaves_no_tag_on_incomplete_data(tmp_path, image, engine, servers):
    host, ref = image
    containerd = engine[3]
    netns = netns_of_docker("28") if containerd else None
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    baseline = None
    killed = 0
    for trial in range(TRIALS + 1):         # the first is never killed: it times a whole push
        remote = str(tmp_path / ("remote-%d" % trial))
        server = servers(remote, tmp_path, ["--spool-dir", str(tmp_path)], netns_pid=netns)
        target = "%s/%s" % (server.host, ref)
        docker(host, "tag", ref, target)
        push = subprocess.Popen(["docker", "-H", host, "push", target], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        delay = rng.uniform(0.05, baseline) if baseline else 300
        why = "seed %d, trial %d, accelerator killed after %.2fs of a %.2fs push" % (seed, trial, delay, baseline or 0)
        try:
            push.wait(delay)
            assert push.returncode == 0 or baseline, why
        except subprocess.TimeoutExpired:
            server.stop(signal.SIGKILL)
            push.kill()             # Docker would retry against a dead registry for a while
            push.wait()
            killed += 1
            assert_remote_whole(remote, why)
            server.start()          # restarted, it takes the same push again
        baseline = baseline or time.monotonic() - start
        docker(host, "push", target)
        assert_remote_whole(remote, why)
        listed = json.loads(dogestry("tags", remote, "--json").stdout)
        assert list(listed["tags"]) == [target.split("/", 1)[1]] and not listed["broken"], (why, listed)
        server.stop()
        docker(host, "rmi", target)
    assert killed >= TRIALS // 2, "most trials must kill the accelerator during a push (seed %d)" % seed


def test_killed_pulls_never_leave_docker_holding_a_half_loaded_image(tmp_path, image, engine):
    host, ref = image
    _host, client, _env, _containerd = engine
    remote = str(tmp_path / "remote")
    dogestry("push", remote, ref, "--docker-host", host)
    expected = client.inspect_image(ref)["RootFS"]["Layers"]
    docker(host, "rmi", "-f", ref)
    baseline = timed(["pull", remote, ref, "--docker-host", host])
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed = 0
    for trial in range(TRIALS):
        docker(host, "rmi", "-f", ref)
        delay = rng.uniform(0.05, baseline)
        why = "seed %d, trial %d, killed after %.2fs of a %.2fs pull" % (seed, trial, delay, baseline)
        killed += killed_at(["pull", remote, ref, "--docker-host", host], delay)
        present = docker(host, "image", "inspect", ref, check=False)
        if present.returncode == 0:     # the load finished before the kill: then the image is whole
            assert json.loads(present.stdout)[0]["RootFS"]["Layers"] == expected, why
        dogestry("pull", remote, ref, "--docker-host", host)
        assert client.inspect_image(ref)["RootFS"]["Layers"] == expected, why
        assert docker(host, "run", "--rm", "--network", "none", ref).stdout.strip() == ref.split(":")[0], why
    assert killed >= TRIALS // 2, "most trials must kill a running pull (seed %d)" % seed


def test_s3_faults_are_retried_or_refused_in_one_line_and_nothing_corrupt_is_stored(
        tmp_path, s3_env, s3_bucket, docker_host, build_image, name):
    """5xx, 503 SlowDown, connections dropped before and after a write, slow and truncated answers."""
    seed = random.randrange(1 << 30)
    proxy = FaultProxy(s3_env, seed)
    remote = "s3://%s/faults/" % s3_bucket
    ref = name + ":1"
    build_image(docker_host, ref, [{"/a.bin": os.urandom(12 * MiB)}, {"/name.txt": name}],
                cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    through = ["--endpoint-url", proxy.url, "--docker-host", docker_host]
    try:
        def until_done(*args):
            """Run it until it succeeds (at most 5 times); every failure is one line, within a bounded time."""
            for attempt in range(5):
                started = time.monotonic()
                proc = dogestry(*args, check=False, timeout=600)
                assert time.monotonic() - started < 300, "seed %d: an attempt took too long" % seed
                if proc.returncode == 0:
                    return attempt
                print("S3 faults: %s failed: %s" % (args[0], proc.stderr.strip()))
                assert proc.stderr.startswith("dogestry: error: ") and proc.stderr.count("\n") == 1, (seed, proc.stderr)
            raise AssertionError("seed %d: 5 attempts failed; faults %s" % (seed, dict(proxy.injected)))
        pushes = 1 + until_done("push", remote, ref, *through)
        docker(docker_host, "rmi", "-f", ref)
        pulls = 1 + until_done("pull", remote, ref, *through)
    finally:
        proxy.stop()
    # Read straight from moto, without faults: what is stored is whole, and the image runs.
    checked = dogestry("verify", remote, "--endpoint-url", s3_env, "--json", check=False)
    assert checked.returncode == 0, (seed, checked.stdout, checked.stderr)
    assert docker(docker_host, "run", "--rm", "--network", "none", ref).stdout == name
    assert sum(proxy.injected.values()) >= 3 and proxy.forwarded > 10, (seed, dict(proxy.injected))
    print("S3 faults: seed %d, injected %s into %d requests; push runs %d, pull runs %d"
          % (seed, dict(proxy.injected), proxy.forwarded + sum(proxy.injected.values()), pushes, pulls))
