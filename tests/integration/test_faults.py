"""Pushes and pulls killed (SIGKILL) at random points, on both image stores: the remote never shows a
tag whose data is incomplete, Docker never holds a half-loaded image, and a re-run finishes. The
same for an accelerator killed while `docker push` sends through it.

Kills are placed by what the system is doing, never by the clock: a push is killed once it has read
byte N of what Docker sends it (`docker save`), a pull once Docker has received byte N of the archive
(a proxy in front of the daemon passes exactly N bytes, then holds the rest until the kill), and an
accelerator once N bytes of `docker push` have arrived in its spool. Each N is drawn from one seeded
generator: DOGESTRY_FAULT_SEED=<seed> replays a run (the seed is printed, and is in every failure
message). A kill that comes too late (the operation finished first) is retried with a new draw.
DOGESTRY_FAULT_TRIALS sets the trials per test (default 5; the accelerator's has one more, never killed).
"""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from dogestry_cli import DOGESTRY, MiB, cli_env, docker, dogestry, netns_of_docker
from gate_proxy import DOWN, UP, GateProxy
from conftest import replay
from s3_faults import FaultProxy

TRIALS = int(os.environ.get("DOGESTRY_FAULT_TRIALS", "5"))
ATTEMPTS = 5        # draws per trial before a trial whose kills all came too late fails


def _unix_path(host):
    assert host.startswith("unix://"), host
    return host[len("unix://"):]


def bytes_through(host, direction, args):
    """Run `dogestry ARGS` through a GateProxy without a gate: the bytes it passed in `direction`."""
    proxy = GateProxy(_unix_path(host), direction)
    try:
        dogestry(*(list(args) + ["--docker-host", proxy.docker_host]))
        return proxy.counts[direction]
    finally:
        proxy.close()


def killed_after_byte(host, direction, at, args):
    """Run `dogestry ARGS` with Docker behind a proxy that passes `at` bytes in `direction`, then holds
    the rest; SIGKILL it there. False if it finished first (the kill came too late)."""
    proxy = GateProxy(_unix_path(host), direction, at)
    proc = subprocess.Popen([DOGESTRY] + list(args) + ["--docker-host", proxy.docker_host], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=cli_env())
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not proxy.gated.wait(0.05):
            assert time.monotonic() < deadline, "dogestry %s neither finished nor reached byte %d" % (args[0], at)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_trial(rng, total, attempt_kill, why):
    """Draw a byte in [1, total) and attempt the kill there; on a late kill, draw again (ATTEMPTS times)."""
    for attempt in range(ATTEMPTS):
        at = rng.randrange(1, total)
        if attempt_kill(at):
            return at
        print("%s: the kill at byte %d of %d came too late (attempt %d); drawing again" % (why, at, total, attempt))
    raise AssertionError("%s: %d kills in a row came too late" % (why, ATTEMPTS))


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
def image(engine, build_image, fault_seed):
    host, _client, _env, _containerd = engine
    content = random.Random("image-%d" % fault_seed)
    name = "dogestry-fault-%08x" % content.getrandbits(32)     # a replay builds the same image
    ref = name + ":1"
    build_image(host, ref, [{"/a.bin": content.randbytes(6 * MiB)}, {"/b.bin": content.randbytes(6 * MiB)},
                            {"/name.txt": name}], cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    return host, ref


def test_killed_pushes_never_leave_a_tag_on_incomplete_data(tmp_path, image, fault_seed):
    host, ref = image
    rng = random.Random(fault_seed)
    total = bytes_through(host, DOWN, ["push", str(tmp_path / "baseline"), ref])   # what Docker sends a push
    for trial in range(TRIALS):
        why = "%s, trial %d" % (replay(fault_seed), trial)
        remotes = []

        def attempt_kill(at):
            remotes.append(str(tmp_path / ("remote-%d-%d" % (trial, len(remotes)))))   # a late kill left a whole push
            return killed_after_byte(host, DOWN, at, ["push", remotes[-1], ref])
        at = kill_trial(rng, total, attempt_kill, why)
        remote = remotes[-1]
        why += ", killed after byte %d of %d from Docker" % (at, total)
        assert_remote_whole(remote, why)
        again = json.loads(dogestry("push", remote, ref, "--docker-host", host, "--json").stdout)
        assert again["image"] == ref, why
        assert_remote_whole(remote, why)
        listed = json.loads(dogestry("tags", remote, "--json").stdout)["tags"]
        assert list(listed) == [ref], why


def _received(spool, seen):
    """Bytes of `docker push` the accelerator has received: its upload spool files, each at the largest
    size seen (a stored upload's file goes away)."""
    for root, _dirs, files in os.walk(spool):
        for filename in files:
            if filename.startswith("upload-"):
                try:
                    seen[filename] = max(seen.get(filename, 0), os.path.getsize(os.path.join(root, filename)))
                except OSError:
                    pass
    return sum(seen.values())


def test_an_accelerator_killed_during_docker_push_leaves_no_tag_on_incomplete_data(tmp_path, image, engine, servers,
                                                                                   fault_seed):
    host, ref = image
    containerd = engine[3]
    netns = netns_of_docker("28") if containerd else None
    rng = random.Random(fault_seed)
    total = None
    for trial in range(TRIALS + 1):         # the first is never killed: it measures what a push sends
        why = "%s, trial %d" % (replay(fault_seed), trial)
        for attempt in range(ATTEMPTS):
            remote = str(tmp_path / ("remote-%d-%d" % (trial, attempt)))     # a late kill left a whole push
            spool = tmp_path / ("spool-%d-%d" % (trial, attempt))
            spool.mkdir()
            server = servers(remote, tmp_path, ["--spool-dir", str(spool)], netns_pid=netns)
            target = "%s/%s" % (server.host, ref)
            docker(host, "tag", ref, target)
            at = rng.randrange(0, max(total * 9 // 10, 1)) if total else None
            push = subprocess.Popen(["docker", "-H", host, "push", target], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            seen = {}
            while push.poll() is None:
                if _received(str(spool), seen) >= (at if at is not None else float("inf")):
                    break
                time.sleep(0.005)
            if push.poll() is None:
                server.stop(signal.SIGKILL)
                push.kill()             # Docker would retry against a dead registry for a while
                push.wait()
                why += ", accelerator killed after %d of %d bytes received" % (_received(str(spool), seen), total or 0)
                assert_remote_whole(remote, why)
                server.start()          # restarted, it takes the same push again
                break
            assert push.returncode == 0 or at is not None, why
            total = total or _received(str(spool), seen)
            if at is None:
                assert total > 0, "%s: the accelerator's spool saw nothing of the push" % why
                break
            print("%s: the kill at byte %s of %s came too late (attempt %d)" % (why, at, total, attempt))
            server.stop()
            docker(host, "rmi", target)
        else:
            raise AssertionError("%s: %d kills in a row came too late" % (why, ATTEMPTS))
        docker(host, "push", target)
        assert_remote_whole(remote, why)
        listed = json.loads(dogestry("tags", remote, "--json").stdout)
        assert list(listed["tags"]) == [target.split("/", 1)[1]] and not listed["broken"], (why, listed)
        server.stop()
        docker(host, "rmi", target)


def test_killed_pulls_never_leave_docker_holding_a_half_loaded_image(tmp_path, image, engine, fault_seed):
    host, ref = image
    _host, client, _env, _containerd = engine
    remote = str(tmp_path / "remote")
    dogestry("push", remote, ref, "--docker-host", host)
    expected = client.inspect_image(ref)["RootFS"]["Layers"]
    docker(host, "rmi", "-f", ref)
    total = bytes_through(host, UP, ["pull", remote, ref])     # what a cold pull sends Docker
    rng = random.Random(fault_seed)
    for trial in range(TRIALS):
        why = "%s, trial %d" % (replay(fault_seed), trial)

        def attempt_kill(at):
            docker(host, "rmi", "-f", ref)
            return killed_after_byte(host, UP, at, ["pull", remote, ref])
        at = kill_trial(rng, total, attempt_kill, why)
        why += ", killed after Docker received byte %d of %d" % (at, total)
        present = docker(host, "image", "inspect", ref, check=False)
        if present.returncode == 0:     # the load finished before the kill: then the image is whole
            assert json.loads(present.stdout)[0]["RootFS"]["Layers"] == expected, why
        dogestry("pull", remote, ref, "--docker-host", host)
        assert client.inspect_image(ref)["RootFS"]["Layers"] == expected, why
        assert docker(host, "run", "--rm", "--network", "none", ref).stdout.strip() == ref.split(":")[0], why


def test_s3_faults_are_retried_or_refused_in_one_line_and_nothing_corrupt_is_stored(
        tmp_path, s3_env, s3_bucket, docker_host, build_image, name, fault_seed):
    """5xx, 503 SlowDown, connections dropped before and after a write, slow and truncated answers."""
    seed = fault_seed
    proxy = FaultProxy(s3_env, seed)
    remote = "s3://%s/faults/" % s3_bucket
    ref = name + ":1"
    build_image(docker_host, ref, [{"/a.bin": random.Random("image-%d" % seed).randbytes(12 * MiB)}, {"/name.txt": name}],
                cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    through = ["--endpoint-url", proxy.url, "--docker-host", docker_host]
    try:
        def until_done(*args):
            """Run it until it succeeds (at most 5 times); every failure is one line."""
            for attempt in range(5):
                proc = dogestry(*args, check=False, timeout=600)     # a hang fails (TimeoutExpired)
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
