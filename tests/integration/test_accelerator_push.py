"""Pushes through the accelerator by clients none of us wrote: `docker push` from the classic and
the containerd image store, and `skopeo copy`; stored in the remote's own format, pulled back
anywhere, and an incremental push after a restart sends only the new layer."""

import base64
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import bcrypt
import docker as docker_sdk

from conftest import free_port
from dogestry_cli import MiB, docker, dogestry, netns_of_docker, skopeo


def _stored_layers(remote):
    found = set()
    for dirpath, _dirs, files in os.walk(os.path.join(remote, "blobs")):
        found.update(os.path.join(dirpath, f) for f in files if f.endswith(".lz4"))
    return found


def test_docker_push_then_incremental_push_after_restart_then_pull(tmp_path, engine, build_image, name, servers):
    host, client, _env, containerd = engine
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path, netns_pid=netns_of_docker("28") if containerd else None)
    first = "%s/%s:1" % (server.host, name)
    image_id = build_image(host, first, [{"/big.bin": os.urandom(3 * MiB)}, {"/name.txt": name}],
                           cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    docker(host, "push", first)
    tags = json.loads(dogestry("tags", remote, "--json").stdout)["tags"]
    assert tags[name + ":1"]["layers"] == 3
    if not containerd:      # the classic store's image ID is the config digest the remote keys the image by
        assert tags[name + ":1"]["image_id"] == image_id
    stored = _stored_layers(remote)
    assert len(stored) == 3

    # A restart forgets everything in memory: the remote's records answer the existence checks.
    server.stop()
    server.start()
    mark = len(server.output())
    second = "%s/%s:2" % (server.host, name)
    ctx = tmp_path / "ctx2"
    ctx.mkdir()
    (ctx / "v2.txt").write_text("2")
    (ctx / "Dockerfile").write_text("FROM %s\nCOPY v2.txt /v2.txt\n" % first)
    list(client.build(path=str(ctx), tag=second, network_mode="none", rm=True, decode=True))
    try:
        docker(host, "push", second)
        log = server.output()[mark:]
        uploads = log.count('"PUT /v2/%s/blobs/uploads/' % name) + log.count('"POST /v2/%s/blobs/uploads/?digest' % name)
        assert uploads == 2, log          # the new layer and the new config, nothing else
        added = _stored_layers(remote) - stored
        assert len(added) == 1, added     # bytes stored: one new layer

        # Pulled back from the remote by Docker through the accelerator, it runs.
        docker(host, "rmi", first, second)
        docker(host, "pull", second)
        assert docker(host, "run", "--rm", "--network", "none", second, "/bin/busybox", "cat", "/v2.txt").stdout == "2"
    finally:
        docker(host, "rmi", "-f", second, check=False)


def test_skopeo_copies_into_the_accelerator_and_dogestry_pulls_it(
        tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path)
    image_id = build_image(docker_host, name + ":1", [{"/big.bin": os.urandom(2 * MiB)}, {"/name.txt": name}],
                           cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    archive = str(tmp_path / "image.tar")
    with open(archive, "wb") as f:
        for chunk in docker_sdk.APIClient(base_url=docker_host, version="auto").get_image(name + ":1"):
            f.write(chunk)
    dest = "docker://%s/%s:sk" % (server.host, name)
    skopeo("copy", "--dest-tls-verify=false", "docker-archive:%s" % archive, dest)
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--config", dest).stdout)
    assert inspected["rootfs"]["diff_ids"] and len(inspected["rootfs"]["diff_ids"]) == 3
    # The engine's own pull reads what skopeo pushed: same image ID, and it runs.
    docker(docker_host, "rmi", "-f", name + ":1")
    result = json.loads(dogestry("pull", remote, name + ":sk", "--json", "--docker-host", docker_host).stdout)
    assert result["image_id"] == image_id
    try:
        assert docker(docker_host, "run", "--rm", "--network", "none", name + ":sk").stdout == name
    finally:
        docker(docker_host, "rmi", "-f", name + ":sk", check=False)


def test_beyond_loopback_tls_and_credentials_with_docker_login(tmp_path, docker_host, build_image, name, servers):
    remote = str(tmp_path / "remote")
    refused = dogestry("serve", remote, "--listen", "0.0.0.0:%d" % free_port(), check=False, timeout=30)
    assert refused.returncode == 1 and "--tls-cert" in refused.stderr and "--htpasswd" in refused.stderr
    cert, key, users = (str(tmp_path / f) for f in ("cert.pem", "key.pem", "htpasswd"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(users, "wb") as f:
        f.write(b"ci:" + bcrypt.hashpw(b"s3cret pass", bcrypt.gensalt(rounds=5)) + b"\n")
    port = free_port()
    server = servers(remote, tmp_path, port=port,
                     args=["--listen", "0.0.0.0:%d" % port, "--tls-cert", cert, "--tls-key", key, "--htpasswd", users])
    trusted = ssl.create_default_context(cafile=cert)

    def status(path, auth=None):
        request = urllib.request.Request("https://127.0.0.1:%d%s" % (port, path))
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
        try:
            return urllib.request.urlopen(request, context=trusted, timeout=30).status, None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("WWW-Authenticate")

    assert status("/v2/") == (401, 'Basic realm="dogestry"')
    assert status("/v2/", b"ci:wrong")[0] == 401
    assert status("/v2/", b"ci:s3cret pass") == (200, None)
    # health needs no credentials; the remote holds nothing before the push below (no version object): unavailable
    assert status("/healthz") == (503, None)
    # Docker itself: refused without a login, pushes and pulls after `docker login` (its own config dir).
    ref = "127.0.0.1:%d/%s:1" % (port, name)
    build_image(docker_host, ref, [{"/name.txt": name}], cmd=["/bin/busybox", "cat", "/name.txt"])
    config = str(tmp_path / "docker-config")
    anonymous = docker(docker_host, "--config", str(tmp_path / "none"), "push", ref, check=False)
    assert anonymous.returncode != 0 and "auth" in (anonymous.stdout + anonymous.stderr).lower()
    docker(docker_host, "--config", config, "login", "127.0.0.1:%d" % port, "-u", "ci", "-p", "s3cret pass")
    docker(docker_host, "--config", config, "push", ref)
    docker(docker_host, "rmi", ref)
    docker(docker_host, "--config", config, "pull", ref)
    assert docker(docker_host, "run", "--rm", "--network", "none", ref).stdout == name
    docker(docker_host, "rmi", ref)
    assert "https://0.0.0.0:%d/v2/ (Basic auth: 1 user(s))" % port in server.output()


def _ctr(address, namespace, *args, check=True):
    proc = subprocess.run(["ctr", "--address", address, "-n", namespace] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, universal_newlines=True, timeout=300,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError("ctr %s: exit %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
    return proc


def test_containerd_ctr_pulls_and_pushes_through_the_accelerator(tmp_path, docker_host, build_image, name, servers):
    """containerd's own client: an image pulled, then a new one (uncompressed OCI layers) pushed."""
    address = next((a for a in ("/run/containerd/containerd.sock", "/var/run/docker/containerd/containerd.sock")
                    if os.path.exists(a)), None)
    assert address, "no containerd socket: the docker_host fixture's dockerd runs one"
    namespace = "dogestry-test-%s" % name[-8:]
    remote = str(tmp_path / "remote")
    image_id = build_image(docker_host, name + ":1", [{"/name.txt": name}], cmd=["/bin/busybox", "cat", "/name.txt"],
                           isolated=True)
    dogestry("push", remote, name + ":1", "--docker-host", docker_host)
    second = build_image(docker_host, name + ":2", [{"/name.txt": name}, {"/two.txt": "2"}],
                         cmd=["/bin/busybox", "cat", "/two.txt"], isolated=True)
    archive = str(tmp_path / "second.tar")
    with open(archive, "wb") as f:
        for chunk in docker_sdk.APIClient(base_url=docker_host, version="auto").get_image(name + ":2"):
            f.write(chunk)
    server = servers(remote, tmp_path)
    try:
        _ctr(address, namespace, "images", "pull", "--plain-http", "%s/%s:1" % (server.host, name))
        listed = _ctr(address, namespace, "images", "ls", "-q").stdout.split()
        assert "%s/%s:1" % (server.host, name) in listed
        _ctr(address, namespace, "images", "import", archive)
        imported = [ref for ref in _ctr(address, namespace, "images", "ls", "-q").stdout.split() if ref.endswith(":2")]
        assert imported, "ctr import named nothing :2"
        target = "%s/%s:2" % (server.host, name)
        _ctr(address, namespace, "images", "tag", imported[0], target)
        _ctr(address, namespace, "images", "push", "--plain-http", target)
        assert server.output().count('"PUT /v2/%s/manifests/2" 201' % name) == 1
    finally:
        for ref in _ctr(address, namespace, "images", "ls", "-q", check=False).stdout.split():
            _ctr(address, namespace, "images", "rm", "--sync", ref, check=False)
        _ctr(address, namespace, "namespaces", "rm", namespace, check=False)
    # What ctr pushed is a whole image on the remote: dogestry pulls it into Docker, same image ID, and it runs.
    docker(docker_host, "rmi", "-f", name + ":2")
    result = json.loads(dogestry("pull", remote, name + ":2", "--json", "--docker-host", docker_host).stdout)
    assert result["image_id"] == second and result["image_id"] != image_id
    assert docker(docker_host, "run", "--rm", "--network", "none", name + ":2").stdout == "2"


def test_hostile_writes_and_many_clients_leave_the_accelerator_serving(tmp_path, servers):
    import concurrent.futures
    import hashlib
    import socket
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path, args=["--max-blob-size", "1M", "--threads", "8"])

    def upload(blob):
        status, headers, _body = server.request("POST", "/v2/app/blobs/uploads/")
        assert status == 202
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("PUT", headers["Location"] + "?digest=sha256:" + hashlib.sha256(blob).hexdigest(), body=blob)
            return conn.getresponse().status
        finally:
            conn.close()

    assert upload(os.urandom(2 * MiB)) == 413                    # oversized
    # a malformed name is refused (400); a path that names no upload or endpoint is not found (404)
    for method, path, expected in [("PUT", "/v2/../etc/manifests/1", 400), ("POST", "/v2/app/blobs/uploads/../../etc", 404),
                                   ("PATCH", "/v2/app/blobs/uploads/..%2f..%2fetc%2fpasswd", 404),
                                   ("PUT", "/v2/app/manifests/..%2f1", 400),
                                   ("PUT", "/v2/app/blobs/uploads/%s?digest=sha256:%s" % ("0" * 32, "0" * 64), 404)]:
        status = server.request(method, path)[0]
        assert status == expected, (method, path, status)
    # A client that announces a body and stalls holds one thread; 40 others are served meanwhile,
    # uploads among them.
    slow = socket.create_connection(("127.0.0.1", server.port))
    try:
        slow.sendall(b"PATCH /v2/app/blobs/uploads/" + b"1" * 32 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        blobs = [os.urandom(1000 + i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            heads = list(pool.map(lambda _i: server.request("GET", "/v2/")[0], range(32)))
            uploads = list(pool.map(upload, blobs))
        assert heads == [200] * 32 and uploads == [201] * 8
        for blob in blobs:      # each served back whole (a blob that is not a layer waits for its manifest)
            status, _h, body = server.request("GET", "/v2/app/blobs/sha256:" + hashlib.sha256(blob).hexdigest())
            assert (status, body) == (200, blob)
    finally:
        slow.close()
    assert server.request("GET", "/v2/")[0] == 200


def test_docker26_pushes_through_an_accelerator_in_its_namespace(tmp_path, docker_host, docker26_host, build_image,
                                                                 name, servers):
    """Docker 26 (OCI-layout `docker save`, the classic store) pushes; the digest it printed pulls the very
    manifest it sent, and the engine loads the image into another daemon (20.10), where it runs."""
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path, netns_pid=netns_of_docker("26"))
    ref = "%s/%s:26" % (server.host, name)
    image_id = build_image(docker26_host, ref, [{"/big.bin": os.urandom(2 * MiB)}, {"/name.txt": name}],
                           cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    digest = None
    try:
        digest = docker(docker26_host, "push", ref).stdout.rsplit("digest: ", 1)[1].split()[0]
        with open(os.path.join(remote, "oci-manifests", "sha256", digest[7:]), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == digest     # kept as pushed
        docker(docker26_host, "rmi", "-f", ref)
        docker(docker26_host, "pull", "%s/%s@%s" % (server.host, name, digest))     # by the digest it printed
    finally:
        docker(docker26_host, "rmi", "-f", ref, *(["%s/%s@%s" % (server.host, name, digest)] if digest else []), check=False)
    result = json.loads(dogestry("pull", remote, "%s:26" % name, "--json", "--docker-host", docker_host).stdout)
    assert result["image_id"] == image_id
    try:
        assert docker(docker_host, "run", "--rm", "--network", "none", "%s:26" % name).stdout == name
    finally:
        docker(docker_host, "rmi", "-f", "%s:26" % name, check=False)


def _pushed_layers(remote, name, tag):
    """The layer descriptors of the manifest a tag pushed through the accelerator names, as stored."""
    with open(os.path.join(remote, "repositories", name, "_tags", tag)) as f:
        digest = json.load(f)["digest"]
    with open(os.path.join(remote, "oci-manifests", "sha256", digest[7:]), "rb") as f:
        return json.load(f)["layers"]


def _blob_path(remote, digest):
    return os.path.join(remote, "blobs", "sha256", digest[7:9], digest[7:])


def _uploads(server, name, since):
    log = server.output()[since:]
    return log.count('"PUT /v2/%s/blobs/uploads/' % name) + log.count('"POST /v2/%s/blobs/uploads/?digest' % name)


def test_a_damaged_pushed_layer_is_sent_again_or_found_by_verify_and_repaired(
        tmp_path, docker_host, build_image, name, servers):
    """docker push through the accelerator; then a stored layer is truncated (HEAD no longer vouches for it: the
    next push sends it again and the good copy replaces it) or has a byte flipped (dogestry verify hashes it,
    --repair quarantines it, the next push sends it again); what is pulled back runs."""
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path)
    ref = "%s/%s" % (server.host, name)
    build_image(docker_host, ref + ":1", [{"/big.bin": os.urandom(3 * MiB)}, {"/name.txt": name}],
                cmd=["/bin/busybox", "cat", "/name.txt"], isolated=True)
    docker(docker_host, "push", ref + ":1")
    layers = _pushed_layers(remote, name, "1")
    big = max(layers, key=lambda layer: layer["size"])
    base = layers[0]
    assert big["size"] > MiB and base is not big

    # Truncated: HEAD says 404, Docker sends it again, the good copy replaces it; the new tag pulls.
    path = _blob_path(remote, big["digest"])
    with open(path, "r+b") as f:
        f.truncate(big["size"] - 4096)
    docker(docker_host, "tag", ref + ":1", ref + ":2")
    mark = len(server.output())
    docker(docker_host, "push", ref + ":2")
    assert _uploads(server, name, mark) == 1, server.output()[mark:]
    with open(path, "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == big["digest"]
    assert os.path.isdir(os.path.join(remote, "quarantine"))

    # A byte flipped inside: verify hashes the blob and calls it repairable; --repair moves it; a push sends it again.
    path = _blob_path(remote, base["digest"])
    with open(path, "r+b") as f:
        f.seek(base["size"] // 2)
        byte = f.read(1)
        f.seek(base["size"] // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    checked = dogestry("verify", remote, "--json", check=False)
    problems = json.loads(checked.stdout)["problems"]
    assert checked.returncode == 1 and [(p["kind"], p["key"][-64:], p["repairable"]) for p in problems] == [
        ("corrupt", base["digest"][7:], True)], checked.stdout
    repaired = json.loads(dogestry("verify", remote, "--repair", "--json").stdout)
    assert list(repaired["moved"]) == [problems[0]["key"]]
    docker(docker_host, "tag", ref + ":1", ref + ":3")
    mark = len(server.output())
    docker(docker_host, "push", ref + ":3")
    assert _uploads(server, name, mark) == 1, server.output()[mark:]
    assert json.loads(dogestry("verify", remote, "--json").stdout)["problems"] == []
    try:
        docker(docker_host, "rmi", ref + ":1", ref + ":2", ref + ":3")
        docker(docker_host, "pull", ref + ":3")
        assert docker(docker_host, "run", "--rm", "--network", "none", ref + ":3").stdout == name
    finally:
        docker(docker_host, "rmi", "-f", ref + ":3", check=False)


def test_a_multi_member_gzip_layer_copied_by_skopeo_is_decoded_and_pulled_by_the_engine(
        tmp_path, docker_host, name, servers):
    """A layer written as several gzip members (as pigz -i and eStargz write them, here by the gzip tool itself),
    copied into the accelerator by skopeo as is: decoded whole, so dogestry pull loads the image and it runs."""
    from conftest import _base_layer_tar
    tar = _base_layer_tar(name)
    cut = len(tar) // 3
    layer = b"".join(subprocess.run(["gzip", "-c", "-n"], input=part, stdout=subprocess.PIPE, check=True).stdout
                     for part in (tar[:cut], tar[cut:2 * cut], tar[2 * cut:]))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/busybox", "cat", "/etc/dogestry-test-base"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                                      "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                                       "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}]}).encode()
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for blob in (layer, config, manifest):
        (layout / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(manifest),
         "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
         "annotations": {"org.opencontainers.image.ref.name": "mm"}}]}))
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path)
    skopeo("copy", "--dest-tls-verify=false", "oci:%s:mm" % layout, "docker://%s/%s:mm" % (server.host, name))
    assert os.path.exists(_blob_path(remote, "sha256:" + hashlib.sha256(layer).hexdigest()))     # sent as is
    dogestry("pull", remote, name + ":mm", "--docker-host", docker_host)
    try:
        assert docker(docker_host, "run", "--rm", "--network", "none", name + ":mm").stdout == name
    finally:
        docker(docker_host, "rmi", "-f", name + ":mm", check=False)
