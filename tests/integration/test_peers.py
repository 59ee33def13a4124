"""Fleet peers with real parts: accelerators (`dogestry serve --peers-file --peer-listen`) on loopback addresses
of their own (127.0.0.N), TLS and the fleet's secret between them, a bucket on moto_server behind
s3_faults.FaultProxy (which counts every byte the accelerators read from S3), and skopeo pulling through each
host's own accelerator, all at once.

- Each object crosses from S3 once for the whole fleet, however many hosts pull.
- A peer killed (SIGKILL) before the pulls, and the owner of a layer killed while it serves it: every pull
  succeeds, with at most 1.5x the image's bytes read from S3.
- A peer whose cache went bad serves wrong bytes: every pull succeeds with the right image, and the liar is
  named in the metrics and the logs.
- With the primary remote down, a fleet that holds a release (warmed by `dogestry warm`) pulls it with tags
  from a second copy of the remote (--fallback-remote) that holds no layer at all.
- `dogestry pull --peers-file` (the engine, as dogestry_pull's peers_file in deploy.yml) through a warmed fleet
  loads the image into a real Docker daemon reading nothing from S3 but the version object and the tag.

The peers' timeouts are generous here (the peers file's settings): what is checked is where bytes come
from, never how fast (the hedge's timing is benchmarks/peers_bench.py's). Speed is never a pass criterion.
"""

import hashlib
import http.server
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

from conftest import replay
from dogestry_cli import DOGESTRY, cli_env, dogestry, skopeo
from dogestry_cli import docker as docker_cli
from peer_fleet import Fleet
from s3_faults import FaultProxy

from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import encoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import blob_key, canonical_json, manifest_key, sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._peers.policy import ranked
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository

MiB = 1 << 20
PREFIX = "peers/"
# Generous: a busy machine must not turn a slow answer into a second read of S3.
SETTINGS = {"connect_timeout": 10, "answer_timeout": 30, "stall_timeout": 30}


def store_image(repo, ref, layers):
    """Layers stored lz4, as dogestry_push stores them; returns {key: stored size} of every object and the
    manifest (no Docker needed: skopeo checks each blob's digest, not that it is a tar)."""
    repo.check(create=True)
    entries, objects = [], {}
    for data in layers:
        lz4 = encoder("lz4")
        stored = lz4.update(data) + lz4.finish()
        oid = sha256_hex(data)
        repo.remote.put(blob_key(oid, "lz4"), stored)
        entries.append(LayerEntry(oid, len(data), "lz4", len(stored)))
        objects[blob_key(oid, "lz4")] = len(stored)
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + e.oid for e in entries]}})
    repo.remote.put(blob_key(sha256_hex(config)), config)
    objects[blob_key(sha256_hex(config))] = len(config)
    manifest = Manifest(sha256_hex(config), len(config), tuple(entries))
    oid = repo.write_manifest(manifest)
    objects[manifest_key(oid)] = len(manifest.to_bytes())
    repo.write_tag(parse_image_ref(ref), oid)
    return objects, manifest


@pytest.fixture
def world(s3_bucket, s3_env, tmp_path, fault_seed):
    """(remote URL, the image's name, its objects {key: size}, its manifest, the counting proxy, a fleet factory)."""
    rng = random.Random(fault_seed)
    name = "dogestry-peers-%s" % uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    remote = "s3://%s/%s" % (s3_bucket, PREFIX)
    repo = Repository(remote_from_url(remote, endpoint_url=s3_env))
    objects, manifest = store_image(repo, name + ":1", [rng.randbytes(3 * MiB) for _layer in range(4)])
    # Slow enough per connection that a layer is still streaming from its owner when others ask for it.
    proxy = FaultProxy(s3_env, faults={}, delay=0.02, rate=3e6)
    fleets = []

    def fleet(count, base, **kwargs):
        started = Fleet(str(tmp_path / ("fleet-%d" % base)), remote, count, DOGESTRY, cli_env(),
                        remote_args=["--endpoint-url", proxy.url], base=base, settings=SETTINGS, **kwargs)
        fleets.append(started)
        return started
    try:
        yield remote, name, objects, manifest, proxy, fleet
    finally:
        for started in fleets:
            started.stop()
        proxy.stop()


def s3_read(proxy, bucket_prefix, keys):
    """Body bytes the proxy forwarded for GETs of `keys`."""
    gets = proxy.counts("GET")
    return sum(gets.get("/%s%s" % (bucket_prefix, key), (0, 0))[1] for key in keys)


def pull_all(hosts, name, tmp_path):
    """skopeo copy of name:1 from each host's own accelerator, all at once; {host index: error or None}."""
    errors, barrier = {}, threading.Barrier(len(hosts))

    def pull(host):
        barrier.wait()
        out = tmp_path / ("pulled-%d" % host.index)
        shutil.rmtree(str(out), ignore_errors=True)
        proc = skopeo("copy", "--src-tls-verify=false", "--retry-times", "3",
                      "docker://%s/%s:1" % (host.registry, name), "dir:%s" % out, check=False)
        errors[host.index] = (proc.stdout + proc.stderr)[-2000:] if proc.returncode else None
    threads = [threading.Thread(target=pull, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return errors


def assert_pulled(hosts, manifest, tmp_path):
    """Each host's copy holds every layer of the image, byte for byte (skopeo checked the digests; so do we)."""
    for host in hosts:
        out = tmp_path / ("pulled-%d" % host.index)
        for layer in manifest.layers:
            with open(str(out / layer.oid), "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == layer.oid, (host.index, layer.oid)


def bucket_prefix(remote):
    return remote[len("s3://"):]


def test_four_hosts_read_each_object_from_s3_once(world, tmp_path, fault_seed):
    remote, name, objects, manifest, proxy, fleet = world
    hosts = fleet(4, 20).start().hosts
    proxy.reset_counts()
    errors = pull_all(hosts, name, tmp_path)
    assert not any(errors.values()), "%s\n%s" % (errors, hosts[0].fleet.logs())
    assert_pulled(hosts, manifest, tmp_path)
    stored = sum(objects.values())
    read = s3_read(proxy, bucket_prefix(remote), objects)
    per_object = {key: s3_read(proxy, bucket_prefix(remote), [key]) for key in objects}
    assert read <= 1.05 * stored, "read %d bytes of a %d-byte image from S3 (%s): %s" % (
        read, stored, replay(fault_seed), per_object)
    assert all(per_object[key] == size for key, size in objects.items()), per_object     # each once, whole
    from_peers = sum(host.metric("dogestry_blob_bytes_total", source="peer") for host in hosts)
    from_remote = sum(host.metric("dogestry_blob_bytes_total", source="remote") for host in hosts)
    assert from_peers >= 3 * sum(l.stored_size for l in manifest.layers) * 0.7, (from_peers, from_remote)
    assert from_remote <= 1.05 * stored, from_remote


def test_a_peer_killed_before_and_the_owner_of_a_layer_killed_while_serving_it(world, tmp_path, fault_seed):
    remote, name, objects, manifest, proxy, fleet = world
    started = fleet(4, 30)
    urls = [host.url for host in started.hosts]
    layer_keys = [layer.key for layer in manifest.layers]
    # The host killed before the run owns a layer (ranks first for it; the hosts' ports, and so the ranks, differ
    # from run to run), so the clients must find it dead; the one that owns a layer once it is gone is killed
    # while serving it.
    dead_key = layer_keys[random.Random(fault_seed).randrange(len(layer_keys))]
    dead = next(host for host in started.hosts if host.url == ranked(dead_key, urls)[0])
    owners = {key: ranked(key, [u for u in urls if u != dead.url])[0] for key in layer_keys}
    victim = next(host for host in started.hosts if host.url == owners[layer_keys[0]])
    clients = [host for host in started.hosts if host not in (dead, victim)]
    started.start()
    dead.kill()
    proxy.reset_counts()
    killed = threading.Event()

    def kill_when_serving():
        deadline = time.time() + 300
        while time.time() < deadline and not killed.is_set():
            try:
                if victim.metric("dogestry_peer_sent_bytes_total") > 0:
                    victim.kill()
                    killed.set()
                    return
            except OSError:
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=kill_when_serving)
    watcher.start()
    errors = pull_all(clients, name, tmp_path)
    killed.set()
    watcher.join()
    assert not victim.alive, "the owner was never seen serving a peer: %s" % started.logs()
    assert not any(errors.values()), "%s (%s)\n%s" % (errors, replay(fault_seed), started.logs())
    assert_pulled(clients, manifest, tmp_path)
    stored = sum(objects.values())
    read = s3_read(proxy, bucket_prefix(remote), objects)
    assert read <= 1.5 * stored, "read %d bytes of a %d-byte image from S3 (%s)" % (read, stored, replay(fault_seed))
    failures = sum(host.metric("dogestry_peer_errors_total", peer=dead.url) for host in clients)
    assert failures >= 1, "nobody found %s dead: %s" % (dead.url, started.logs())


def test_a_peer_serving_wrong_bytes_is_caught_and_named(world, tmp_path, fault_seed):
    remote, name, objects, manifest, proxy, fleet = world
    started = fleet(3, 40).start()
    urls = [host.url for host in started.hosts]
    layer_keys = [layer.key for layer in manifest.layers]
    liar = next(host for host in started.hosts if host.url == ranked(layer_keys[0], urls)[0])
    # The owners fetch the release (as publish's pre-warming does); then the liar's cache goes bad.
    dogestry("warm", remote, name + ":1", "--peers-file", started.client_peers_file, "--endpoint-url", proxy.url)
    owned = [key for key in objects if ranked(key, urls)[0] == liar.url]
    entries = [os.path.join(liar.cache, key.rsplit("/", 1)[-1]) for key in owned]
    deadline = time.time() + 300
    while not all(os.path.exists(path) for path in entries):
        assert time.time() < deadline, "the owner did not warm %s: %s" % (owned, liar.output()[-3000:])
        time.sleep(0.05)
    for path in entries:
        with open(path, "r+b") as handle:
            handle.seek(os.path.getsize(path) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
    clients = [host for host in started.hosts if host is not liar]
    errors = pull_all(clients, name, tmp_path)
    assert not any(errors.values()), "%s\n%s" % (errors, started.logs())
    assert_pulled(clients, manifest, tmp_path)
    named = sum(host.metric("dogestry_peer_errors_total", peer=liar.url, kind="corrupt") for host in clients)
    assert named >= 1, "nobody caught %s: %s" % (liar.url, started.logs())
    # Named for the first of its objects asked for (a manifest, say), and then skipped: not asked again.
    assert any(re.search(r"peer %s served \S+ with wrong content" % re.escape(liar.url), host.output())
               for host in clients), started.logs()


class _Mirror:
    """A static HTTP server over a directory: a second copy of the remote, as a CDN would serve it."""

    def __init__(self, root):
        def handler(*args, **kwargs):
            return _Quiet(*args, directory=root, **kwargs)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_with_the_primary_down_a_warmed_fleet_pulls_with_tags_from_a_mirror_that_holds_no_layer(
        world, tmp_path, s3_env, s3_bucket):
    remote, name, objects, manifest, proxy, fleet = world
    # The mirror: the version object, the tag and the manifest, not one blob.
    mirror_root = tmp_path / "mirror"
    s3 = boto3.client("s3", endpoint_url=s3_env)
    for key in ["dogestry.json", "repositories/%s/_tags/1" % name, manifest_key(sha256_hex(manifest.to_bytes()))]:
        path = mirror_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=s3_bucket, Key=PREFIX + key)["Body"].read())
    mirror = _Mirror(str(mirror_root))
    try:
        started = fleet(3, 50, extra_args=["--fallback-remote", mirror.url]).start()
        dogestry("warm", remote, name + ":1", "--peers-file", started.client_peers_file, "--endpoint-url", proxy.url)
        urls = [host.url for host in started.hosts]
        for key in objects:
            owner = next(host for host in started.hosts if host.url == ranked(key, urls)[0])
            path = os.path.join(owner.cache, key.rsplit("/", 1)[-1])
            deadline = time.time() + 300
            while not os.path.exists(path):
                assert time.time() < deadline, "%s was not warmed: %s" % (key, owner.output()[-3000:])
                time.sleep(0.05)
        proxy.stop()            # the primary is unreachable from now on
        errors = pull_all(started.hosts, name, tmp_path)
        assert not any(errors.values()), "%s\n%s" % (errors, started.logs())
        assert_pulled(started.hosts, manifest, tmp_path)
    finally:
        mirror.stop()


def test_dogestry_pull_through_a_warmed_fleet_reads_only_the_tag_from_s3(docker_host, build_image, s3_bucket, s3_env,
                                                                         tmp_path):
    """The engine's path (dogestry pull --peers-file, as dogestry_pull's peers_file in deploy.yml): every object
    from its owner among the accelerators, verified in the pull's spool, loaded into a real daemon."""
    name = "dogestry-peerpull-%s" % uuid.uuid4().hex[:8]
    image_id = build_image(docker_host, name + ":1", [{"/data/a.bin": os.urandom(3 * MiB)},
                                                      {"/greeting": "through peers %s" % name}],
                           cmd=["/bin/busybox", "cat", "/greeting"], isolated=True)
    remote = "s3://%s/%s" % (s3_bucket, PREFIX)
    dogestry("push", remote, name + ":1", "--endpoint-url", s3_env, "--docker-host", docker_host)
    proxy = FaultProxy(s3_env, faults={}, delay=0.02, rate=20e6)
    fleet = Fleet(str(tmp_path / "fleet"), remote, 3, DOGESTRY, cli_env(), remote_args=["--endpoint-url", proxy.url],
                  base=60, settings=SETTINGS)
    try:
        fleet.start()
        dogestry("warm", remote, name + ":1", "--peers-file", fleet.client_peers_file, "--endpoint-url", proxy.url)
        repo = Repository(remote_from_url(remote, endpoint_url=s3_env))
        manifest_oid = repo.read_tag(parse_image_ref(name + ":1"))
        manifest = repo.read_manifest(manifest_oid)
        keys = [manifest_key(manifest_oid), manifest.config_key] + [layer.key for layer in manifest.layers]
        urls = [host.url for host in fleet.hosts]
        deadline = time.time() + 300
        for key in keys:
            owner = next(host for host in fleet.hosts if host.url == ranked(key, urls)[0])
            while not os.path.exists(os.path.join(owner.cache, key.rsplit("/", 1)[-1])):
                assert time.time() < deadline, "%s was not warmed: %s" % (key, fleet.logs())
                time.sleep(0.05)
        docker_cli(docker_host, "rmi", "-f", name + ":1")
        proxy.reset_counts()
        pulled = dogestry("pull", remote, name + ":1", "--peers-file", fleet.client_peers_file, "--endpoint-url",
                          proxy.url, "--docker-host", docker_host, "--json")
        assert json.loads(pulled.stdout.splitlines()[-1])["image_id"] == image_id
        read = sorted(path[len("/%s/%s" % (s3_bucket, PREFIX)):] for path in proxy.counts("GET"))
        assert read == ["dogestry.json", "repositories/%s/_tags/1" % name], read
        ran = docker_cli(docker_host, "run", "--rm", "--network", "none", name + ":1").stdout.strip()
        assert ran == "through peers %s" % name
    finally:
        fleet.stop()
        proxy.stop()
