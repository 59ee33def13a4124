"""Fan-out: three Docker daemons pull the same image at once through one shared accelerator over S3.

The daemons (the system's dockerd 20.10, each with its own data root, exec root and containerd
namespace) run in the host's network namespace, each with a bridge of its own (docker_daemons.py
says why), so that all three reach one `dogestry serve` on the host's loopback with a plain
`docker pull 127.0.0.1:PORT/NAME:TAG`. The accelerator's remote is a bucket on moto_server behind
s3_faults.FaultProxy (no faults; a delay per request and a bandwidth cap per connection, so that
the first daemon's fetch of a layer is still in flight when the others ask for it), which records
every request it forwards. The three pulls start together (whether they overlap is the scheduler's);
all must succeed, each daemon must hold the image and run it, and every layer must have been read
from S3 once: its stored bytes exactly once (a layer over the S3 part size comes as ranged parts, none
of which may overlap), as the accelerator's cache metrics agree (at most one miss per layer, every
daemon's request served). A later pull on one daemon reads only the tag from S3.
"""

import json
import os
import random
import re
import shutil
import threading
import time
import uuid

import boto3
import pytest

from docker_daemons import Dockerd
from dogestry_cli import MiB, Server, dogestry
from dogestry_cli import docker as docker_cli
from s3_faults import FaultProxy

PREFIX = "fanout/"


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    for tool in ("dockerd", "ip"):
        if not shutil.which(tool):
            pytest.fail("the fan-out test needs %s (scripts/setup.sh installs it)" % tool, pytrace=False)
    logs = tmp_path_factory.mktemp("fanout-logs")
    # Short paths: containerd's sockets live under the exec roots (108-byte limit).
    root = "/tmp/dogestry-fanout-%d" % os.getpid()
    started = [Dockerd("fanout-%d" % i, os.path.join(root, str(i)), str(logs / ("dockerd-%d.log" % i)), network="host")
               for i in (1, 2, 3)]
    try:
        for daemon in started:
            daemon.start()
        for daemon in started:
            daemon.wait()
        yield started
    finally:
        for daemon in started:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def text(rng, size):
    """Log-like lines: lz4 shrinks them, unlike the random layer."""
    words = "pull push layer blob cache remote daemon fetch verify manifest tag bucket".split()
    lines, total = [], 0
    while total < size:
        line = "%06d %s %s\n" % (rng.randrange(10 ** 6), rng.choice(words), " ".join(rng.choices(words, k=6)))
        lines.append(line)
        total += len(line)
    return "".join(lines)[:size]


def stored_layers(endpoint, bucket, name, tag):
    """{proxy path of each layer's object: its stored size}, read from the remote's own files
    (docs/FORMAT.md: tag -> manifest -> layers), and the proxy paths of the config and the manifest."""
    s3 = boto3.client("s3", endpoint_url=endpoint)

    def get(key):
        return s3.get_object(Bucket=bucket, Key=PREFIX + key)["Body"].read()
    manifest_hex = get("repositories/%s/_tags/%s" % (name, tag)).decode().strip().split(":", 1)[1]
    manifest = json.loads(get("manifests/sha256/" + manifest_hex))

    def path(digest, suffix=""):
        hexdigest = digest.split(":", 1)[1]
        return "/%s/%sblobs/sha256/%s/%s%s" % (bucket, PREFIX, hexdigest[:2], hexdigest, suffix)
    layers = {path(layer["digest"], ".lz4" if layer["encoding"] == "lz4" else ""): layer["stored_size"]
              for layer in manifest["layers"]}
    return layers, path(manifest["config"]["digest"]), "/%s/%smanifests/sha256/%s" % (bucket, PREFIX, manifest_hex)


def spans(records, path, size):
    """The byte spans [first, last] of each GET of `path` the proxy forwarded (a whole GET: all of it)."""
    found = []
    for rec in records:
        if rec.method == "GET" and rec.path == path:
            match = re.match(r"bytes=(\d+)-(\d*)$", rec.range or "")
            first, last = (int(match.group(1)), int(match.group(2) or size - 1)) if match else (0, size - 1)
            found.append((first, min(last, size - 1)))
    return sorted(found)


def metric(text_, name):
    for line in text_.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics:\n%s" % (name, text_))


def test_three_daemons_pull_one_image_at_once_through_one_accelerator(daemons, docker_host, build_image, s3_bucket,
                                                                      s3_env, tmp_path):
    name = "dogestry-fanout-%s" % uuid.uuid4().hex[:8]
    greeting = "fanned out %s" % uuid.uuid4().hex
    rng = random.Random(name)
    image_id = build_image(docker_host, name + ":1", [
        {"/data/random.bin": os.urandom(12 * MiB)},     # stored over the 8 MiB S3 part size: ranged GETs
        {"/data/log.txt": text(rng, 4 * MiB)},
        {"/greeting": greeting},
    ], cmd=["/bin/busybox", "cat", "/greeting"])
    remote = "s3://%s/%s" % (s3_bucket, PREFIX)
    dogestry("push", remote, name + ":1", "--endpoint-url", s3_env, "--docker-host", docker_host)
    layers, config_path, manifest_path = stored_layers(s3_env, s3_bucket, name, "1")
    tag_path = "/%s/%srepositories/%s/_tags/1" % (s3_bucket, PREFIX, name)
    assert len(layers) == 4 and max(layers.values()) > 8 * MiB, layers

    proxy = FaultProxy(s3_env, faults={}, delay=0.05, rate=4e6)
    server = None
    try:
        server = Server(remote, tmp_path, args=["--endpoint-url", proxy.url, "--read-only",
                                                "--cache-dir", str(tmp_path / "cache")])
        ref = "%s/%s:1" % (server.host, name)
        barrier = threading.Barrier(len(daemons))
        pulls = {}

        def pull(daemon):
            barrier.wait()
            started = time.monotonic()
            proc = docker_cli(daemon.host, "pull", ref, check=False)
            pulls[daemon.name] = (proc, started, time.monotonic())
        threads = [threading.Thread(target=pull, args=(daemon,)) for daemon in daemons]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(320)
        assert sorted(pulls) == sorted(d.name for d in daemons), "pulls still running: %s" % sorted(pulls)
        failed = {host: proc.stdout + proc.stderr for host, (proc, _s, _e) in pulls.items() if proc.returncode}
        assert not failed, "%s\n%s" % (failed, server.output()[-3000:])
        # Started together (the barrier); whether they overlap is the scheduler's: what matters is below.
        print("pulls (start, end): %s" % {h: (s, e) for h, (_p, s, e) in pulls.items()})

        # Each daemon holds the image and runs it.
        for daemon in daemons:
            assert daemon.api().inspect_image(ref)["Id"] == image_id, daemon.name
            assert docker_cli(daemon.host, "run", "--rm", "--network", "none", ref).stdout.strip() == greeting

        # Each layer was read from S3 once: its stored bytes exactly once, no byte twice.
        records = list(proxy.records)
        gets = proxy.counts("GET")
        read = {path: gets.get(path, (0, 0))[1] for path in layers}
        assert read == layers, "bytes read from S3 per layer %s, stored %s; GETs %s" % (
            read, layers, {path: gets.get(path, (0, 0))[0] for path in layers})
        for path, size in layers.items():
            got = spans(records, path, size)
            overlaps = [(a, b) for a, b in zip(got, got[1:]) if b[0] <= a[1]]
            assert not overlaps and got[0][0] == 0 and got[-1][1] == size - 1, (path, size, got)
        # The config and the manifest too: daemons asking while the first read is in flight wait for it.
        listing = "\n".join("  %s: %d GETs, %d bytes" % (p, n, b) for p, (n, b) in sorted(gets.items()))
        assert gets.get(config_path, (0, 0))[0] <= 1, listing
        assert gets.get(manifest_path, (0, 0))[0] <= 1, listing

        # The accelerator saw it the same way: one fetch per layer, the other two daemons served from its cache.
        metrics = server.request("GET", "/metrics")[2].decode()
        assert metric(metrics, "dogestry_cache_misses_total") <= len(layers), metrics      # at most once per blob
        assert metric(metrics, "dogestry_cache_misses_total") + metric(metrics, "dogestry_cache_hits_total") \
            >= 3 * len(layers), metrics                                                   # every daemon served

        # A later pull of the same image reads nothing from S3 but its tag (which may move).
        again = daemons[0]
        docker_cli(again.host, "rmi", ref)
        assert not again.api().images(), "the image and its layers are gone from %s" % again.name
        proxy.reset_counts()
        docker_cli(again.host, "pull", ref)
        assert docker_cli(again.host, "run", "--rm", "--network", "none", ref).stdout.strip() == greeting
        assert sorted(proxy.counts("GET")) == [tag_path], proxy.counts("GET")
    finally:
        if server:
            server.stop()
        proxy.stop()
