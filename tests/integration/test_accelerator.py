"""`dogestry serve` (the accelerator's read path) and the `dogestry` CLI, through real clients.

The CLI runs as .venv/bin/dogestry (the console script pyproject.toml installs), with this
checkout's engine first on PYTHONPATH (the venv may be shared by several checkouts). Images are
pushed with `dogestry push`, served with `dogestry serve` in a subprocess, and pulled by clients
none of us wrote: Docker 20.10, Docker 26 (in its own network namespace) and skopeo.
"""

import http.client
import json
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import docker_run_dir, free_port
from dogestry_cli import MiB, docker, dogestry, skopeo


@pytest.fixture
def name():
    return "dogestry-acc-%s" % uuid.uuid4().hex[:8]


def pushed_image(docker_host, build_image, remote, name, env=None, extra=(), size=3 * MiB):
    """Build an image (a random layer, so every pull moves real bytes), push it with the CLI,
    and remove it from the daemon. Returns its image ID."""
    image_id = build_image(docker_host, name + ":1", [{"/big.bin": os.urandom(size)}, {"/name.txt": name}],
                           cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    result = json.loads(dogestry("push", remote, name + ":1", "--json", "--docker-host", docker_host,
                                 *extra, env=env).stdout)
    assert result["image_id"] == image_id and len(result["layers_transferred"]) == 3
    docker(docker_host, "rmi", "-f", name + ":1")
    return image_id


def test_docker_pulls_through_the_accelerator_and_runs_it(tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    server = servers(remote, tmp_path)
    ref = "%s/%s:1" % (server.host, name)
    try:
        docker(docker_host, "pull", ref)
        assert docker(docker_host, "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == image_id
        assert docker(docker_host, "run", "--rm", "--network", "none", ref).stdout == name
        # One log line per request, the blob GETs among them.
        assert server.output().count('"GET /v2/%s/blobs/sha256:' % name) == 4
    finally:
        docker(docker_host, "rmi", "-f", ref, check=False)
    assert server.stop() == 0
    assert "shutting down" in server.output()


def test_docker26_pulls_through_an_accelerator_in_its_namespace(tmp_path, docker_host, docker26_host,
                                                                build_image, name, servers):
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    with open(os.path.join(docker_run_dir("26"), "docker.pid")) as f:
        pid = int(f.read().strip())
    subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % pid, "ip", "link", "set", "lo", "up"], check=True)
    server = servers(remote, tmp_path, netns_pid=pid)
    ref = "%s/%s:1" % (server.host, name)
    try:
        docker(docker26_host, "pull", ref)
        assert docker(docker26_host, "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == image_id
        assert docker(docker26_host, "run", "--rm", "--network", "none", ref).stdout == name
    finally:
        docker(docker26_host, "rmi", "-f", ref, check=False)


def _oci_config_digest(layout):
    with open(os.path.join(layout, "index.json")) as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    with open(os.path.join(layout, "blobs", "sha256", manifest_digest.split(":")[1]), "rb") as f:
        manifest = json.load(f)
    return manifest_digest, manifest["config"]["digest"]


def test_skopeo_inspects_and_copies_and_bad_requests_are_refused(tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    server = servers(remote, tmp_path)
    src = "docker://%s/%s:1" % (server.host, name)
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", src).stdout)
    assert inspected["Layers"] and inspected["Digest"].startswith("sha256:")
    layout = str(tmp_path / "oci")
    skopeo("copy", "--preserve-digests", "--src-tls-verify=false", src, "oci:%s:1" % layout)
    manifest_digest, config_digest = _oci_config_digest(layout)
    assert (manifest_digest, config_digest) == (inspected["Digest"], image_id)
    # by digest, as Docker asks after a restart
    status, headers, _body = server.request("HEAD", "/v2/%s/manifests/%s" % (name, manifest_digest))
    assert (status, headers["Docker-Content-Digest"]) == (200, manifest_digest)

    # Hostile and malformed requests are refused, and the server keeps serving.
    layer = inspected["Layers"][0]
    for method, path, headers, expected in [
        ("GET", "/v2/../../../etc/passwd/manifests/1", {}, 400),
        ("GET", "/v2/%s/blobs/sha256:%%2e%%2e%%2f%%2e%%2e" % name, {}, 400),
        ("GET", "/v2/%s/blobs/sha256:xyz" % name, {}, 400),
        ("GET", "/v2/%s/blobs/%s" % (name, layer), {"Range": "bytes=100-5"}, 416),
        ("GET", "/v2/%s/blobs/%s" % (name, layer), {"Range": "bytes=99999999999999-"}, 416),
        ("PUT", "/v2/%s/manifests/2" % name, {}, 400),         # no manifest in the body
        ("DELETE", "/v2/%s/blobs/%s" % (name, layer), {}, 405),
    ]:
        status, _h, body = server.request(method, path, headers)
        assert status == expected, (method, path, body)
    status, headers, body = server.request("GET", "/v2/%s/blobs/%s" % (name, layer), {"Range": "bytes=10-19"})
    with open(os.path.join(layout, "blobs", "sha256", layer.split(":")[1]), "rb") as f:
        assert (status, body) == (206, f.read()[10:20])
    # A client that sends half a request and stalls holds one thread, not the server.
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        slow.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        assert server.request("GET", "/v2/")[0] == 200
        assert server.request("GET", "/healthz")[0] == 200
    finally:
        slow.close()


def test_server_side_pull_loads_into_the_daemon(tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    plain = servers(remote, tmp_path)
    assert plain.request("POST", "/dogestry/pull?image=%s:1" % name)[0] == 404     # off unless asked for
    server = servers(remote, tmp_path, args=["--pull-into", docker_host])
    try:
        status, _h, body = server.request("POST", "/dogestry/pull?image=%s:1" % name)
        result = json.loads(body)
        assert status == 200 and result["changed"] and result["image_id"] == image_id, body
        assert docker(docker_host, "image", "inspect", "-f", "{{.Id}}", name + ":1").stdout.strip() == image_id
        status, _h, body = server.request("POST", "/dogestry/pull?image=%s:1" % name)
        assert status == 200 and json.loads(body)["changed"] is False
        status, _h, body = server.request("POST", "/dogestry/pull?image=%s:404" % name)
        assert status == 404 and b"no such tag" in body, body
        assert server.request("GET", "/dogestry/pull?image=%s:1" % name)[0] == 405
        assert server.request("POST", "/dogestry/pull")[0] == 400
    finally:
        docker(docker_host, "rmi", "-f", name + ":1", check=False)


def test_corrupt_stored_layer_is_never_served_as_good(tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    pushed_image(docker_host, build_image, remote, name)
    cache = tmp_path / "cache"
    server = servers(remote, tmp_path, args=("--cache-dir", cache))
    src = "docker://%s/%s:1" % (server.host, name)
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", src).stdout)
    big = os.path.join(remote, "blobs", "sha256", inspected["Layers"][1][7:9], inspected["Layers"][1][7:] + ".lz4")
    with open(big, "r+b") as f:
        f.seek(os.path.getsize(big) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = skopeo("copy", "--src-tls-verify=false", src, "oci:%s:1" % (tmp_path / "oci"), check=False)
    assert proc.returncode != 0
    ref = "%s/%s:1" % (server.host, name)
    proc = docker(docker_host, "pull", ref, check=False)
    assert proc.returncode != 0
    assert docker(docker_host, "image", "inspect", ref, check=False).returncode != 0
    assert "aborted: layer %s" % inspected["Layers"][1] in server.output()
    assert inspected["Layers"][1][7:] + ".lz4" not in os.listdir(str(cache))    # nothing unverified is kept
    assert server.request("GET", "/v2/")[0] == 200


def test_over_s3_with_cache_killed_mid_blob_and_restarted(tmp_path, docker_host, build_image, name, servers,
                                                          s3_bucket, s3_env):
    remote = "s3://%s/reg" % s3_bucket
    s3 = ("--endpoint-url", s3_env)
    image_id = pushed_image(docker_host, build_image, remote, name, extra=s3, size=32 * MiB)
    cache = tmp_path / "cache"
    server = servers(remote, tmp_path, args=s3 + ("--cache-dir", cache, "--cache-size", "100M"))
    src = "docker://%s/%s:1" % (server.host, name)
    layers = json.loads(skopeo("inspect", "--tls-verify=false", src).stdout)["Layers"]
    # A client starts on the big layer, then the server is killed in the middle of it.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/v2/%s/blobs/%s" % (name, layers[1]))
    response = conn.getresponse()
    assert response.status == 200 and len(response.read(MiB)) == MiB
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    assert skopeo("inspect", "--tls-verify=false", src, check=False).returncode != 0
    server.start()
    assert not [p for p in os.listdir(str(cache)) if p.endswith(".tmp")]   # the half fetch was dropped
    for copy in ("oci1", "oci2"):
        layout = str(tmp_path / copy)
        skopeo("copy", "--preserve-digests", "--src-tls-verify=false", src, "oci:%s:1" % layout)
        assert _oci_config_digest(layout)[1] == image_id
    cached = sorted(os.listdir(str(cache)))
    assert cached == sorted(layer[7:] + ".lz4" for layer in layers)
    metrics = server.request("GET", "/metrics")[2].decode()
    assert "dogestry_cache_misses_total 3.0" in metrics and "dogestry_cache_hits_total 3.0" in metrics
    served = [line for line in metrics.splitlines() if line.startswith("dogestry_bytes_served_total ")]
    assert float(served[0].split()[1]) > 2 * 32 * MiB
    tags = json.loads(dogestry("tags", remote, name, "--json", *s3).stdout)["tags"]
    assert tags["%s:1" % name]["image_id"] == image_id


# ---- the CLI ------------------------------------------------------------------------------------

def test_cli_usage_and_errors():
    proc = dogestry("--help")
    assert "push" in proc.stdout and "serve" in proc.stdout
    proc = dogestry("push", check=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = dogestry("tags", "/nonexistent/remote", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dogestry: error: ")
    proc = dogestry("serve", "relative/path", check=False)
    assert proc.returncode == 1 and "relative path" in proc.stderr and proc.stderr.count("\n") == 1
    proc = dogestry("prune", "/x", "--grace-period", "soon", check=False)
    assert proc.returncode == 2


def test_cli_shows_a_progress_bar_on_a_terminal_only(tmp_path, docker_host, build_image, name):
    import pty
    from dogestry_cli import DOGESTRY, cli_env
    remote = str(tmp_path / "remote")
    pushed_image(docker_host, build_image, remote, name)
    main, terminal = pty.openpty()
    try:
        proc = subprocess.run([DOGESTRY, "pull", remote, name + ":1", "--docker-host", docker_host],
                              stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, env=cli_env(),
                              universal_newlines=True, timeout=300, check=False)
        os.set_blocking(main, False)
        shown = os.read(main, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(main)
        os.close(terminal)
        docker(docker_host, "rmi", "-f", name + ":1", check=False)
    assert proc.returncode == 0 and "on %s" % docker_host in proc.stdout      # the result, on stdout
    assert re.search(r"\[#{24}\] 3/3 layers [0-9.]+ MiB of [0-9.]+ MiB [0-9.]+ (?:[KMG]i)?B/s ETA 0:00", shown), shown
    piped = dogestry("pull", remote, name + ":1", "--docker-host", docker_host)       # stderr is a pipe: quiet
    docker(docker_host, "rmi", "-f", name + ":1", check=False)
    assert piped.stderr == ""


def test_cli_serve_refuses_non_loopback_and_busy_ports(tmp_path, servers):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
    Repository(LocalRemote(str(tmp_path / "r"))).check(create=True)
    proc = dogestry("serve", tmp_path / "r", "--listen", "0.0.0.0:%d" % free_port(), check=False, timeout=30)
    assert proc.returncode == 1 and "TLS" in proc.stderr and proc.stderr.count("\n") == 1
    server = servers(str(tmp_path / "r"), tmp_path)
    proc = dogestry("serve", tmp_path / "r", "--listen", server.host, check=False, timeout=30)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr


def test_cli_push_pull_into_two_daemons_tags_prune(tmp_path, docker_host, docker26_host, build_image, name):
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    again = dogestry("push", remote, name + ":1", "--docker-host", docker_host, check=False)
    assert again.returncode != 0 and "not found" in again.stderr     # it was removed from the daemon
    try:
        proc = dogestry("pull", remote, name + ":1", "--json", "--docker-host", docker_host,
                        "--docker-host", docker26_host)
        results = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["docker_host"] for r in results] == [docker_host, docker26_host]
        assert all(r["image_id"] == image_id and r["changed"] for r in results)
        assert proc.stderr == ""        # no progress output in a pipe
        for host in (docker_host, docker26_host):
            assert docker(host, "run", "--rm", "--network", "none", name + ":1").stdout == name
        proc = dogestry("pull", remote, name + ":1", "--docker-host", docker_host)
        assert "up to date" in proc.stdout
    finally:
        docker(docker26_host, "rmi", "-f", name + ":1", check=False)
    tags = json.loads(dogestry("tags", remote, "dogestry-acc-*", "--json").stdout)["tags"]
    assert tags["%s:1" % name]["image_id"] == image_id
    assert name + ":1" in dogestry("tags", remote).stdout
    two_hours_ago = time.time() - 7200     # prune spares anything younger than a minute whatever it is told
    for dirpath, _dirs, files in os.walk(remote):
        for f in files:
            os.utime(os.path.join(dirpath, f), (two_hours_ago, two_hours_ago))
    assert json.loads(dogestry("prune", remote, "--json", "--grace-period", "1h").stdout)["count"] == 0
    os.unlink(os.path.join(remote, "repositories", name, "_tags", "1"))
    dry = json.loads(dogestry("prune", remote, "--json", "--dry-run", "--grace-period", "1h").stdout)
    assert dry["count"] == 6        # 3 layers, config, manifest, image index
    assert os.path.exists(os.path.join(remote, dry["deleted"]["blobs"][0]))
    done = json.loads(dogestry("prune", remote, "--json", "--grace-period", "1h").stdout)
    assert done["count"] == 6 and not os.path.exists(os.path.join(remote, dry["deleted"]["blobs"][0]))


def test_cli_pull_into_two_daemons_downloads_each_layer_once(tmp_path, docker_host, docker26_host, build_image,
                                                             name):
    """Over a remote that must be downloaded (a static web server), `pull --docker-host A --docker-host B`
    fetches every layer once and loads it into both."""
    remote = str(tmp_path / "remote")
    image_id = pushed_image(docker_host, build_image, remote, name)
    port = free_port()
    log_path = str(tmp_path / "http.log")
    with open(log_path, "wb") as log:
        web = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", remote,
                                str(port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        url = "http://127.0.0.1:%d/" % port
        deadline = time.time() + 30
        while "Serving HTTP" not in open(log_path).read() and time.time() < deadline:
            time.sleep(0.1)
        proc = dogestry("pull", url, name + ":1", "--json", "--docker-host", docker_host,
                        "--docker-host", docker26_host)
        results = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [(r["image_id"], len(r["layers_transferred"])) for r in results] == [(image_id, 3)] * 2
        for host in (docker_host, docker26_host):
            assert docker(host, "run", "--rm", "--network", "none", name + ":1").stdout == name
    finally:
        web.terminate()
        web.wait(10)
        docker(docker26_host, "rmi", "-f", name + ":1", check=False)
    with open(log_path) as f:
        gets = [line.split('"GET ')[1].split()[0] for line in f if '"GET /blobs/' in line and ".lz4" in line]
    assert len(gets) == 3 and len(set(gets)) == 3, gets


def test_docker28_mirrors_any_registry_name_through_hosts_toml(tmp_path, docker_host, docker28_host, build_image,
                                                               name, servers):
    """The containerd store reads /etc/docker/certs.d/<registry>/hosts.toml (what the registry_block role
    writes): `docker pull <registry>/<name>:tag` then asks the accelerator, with ?ns=<registry>."""
    registry = "registry-%s.example:5000" % name[-8:]
    full = "%s/%s" % (registry, name)
    remote = str(tmp_path / "remote")
    build_image(docker_host, full + ":1", [{"/name.txt": name}], cmd=["/bin/busybox", "cat", "/name.txt"])
    dogestry("push", remote, full + ":1", "--docker-host", docker_host)
    with open(os.path.join(docker_run_dir("28"), "docker.pid")) as f:
        pid = int(f.read().strip())
    subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % pid, "ip", "link", "set", "lo", "up"], check=True)
    server = servers(remote, tmp_path, netns_pid=pid)
    certs = os.path.join("/etc/docker/certs.d", registry)
    os.makedirs(certs)
    try:
        with open(os.path.join(certs, "hosts.toml"), "w") as f:
            f.write('server = "https://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n'
                    % (registry, server.host))
        docker(docker28_host, "pull", full + ":1")      # the registry's name does not resolve: only the mirror can answer
        assert "ns=%s" % registry in server.output().replace("%3A", ":")
        assert docker(docker28_host, "run", "--rm", "--network", "none", full + ":1").stdout == name
    finally:
        shutil.rmtree(certs, ignore_errors=True)
        docker(docker28_host, "rmi", "-f", full + ":1", check=False)
