"""The engine's loopback registry endpoint, request by request (WSGI calls, no sockets, no Docker),
over a directory remote; and how the engine tells a daemon that shares its loopback."""

import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import threading

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.daemon import Daemon, _shares_our_loopback, tls_config
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError, FormatError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import blob_key, canonical_json, pushed_key, sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest, PushRecord
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.loopback import ENGINE_NAME, ENGINE_PORT, LoopbackServer, PullServer, only_under
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.loopback_push import PushReceiver
from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import encoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository

TAG = "push-secret"


def layer_tar(payload):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def call(app, method, path, body=b"", query=""):
    """(status, headers, body) of one request to a WSGI app."""
    answer = {}

    def start_response(status, headers):
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "HTTP_HOST": "127.0.0.1:%d" % ENGINE_PORT,
               "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    chunks = app(environ, start_response)
    try:
        data = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return answer["status"], answer["headers"], data


@pytest.fixture
def repo(tmp_path):
    repository = Repository(LocalRemote(str(tmp_path / "remote")))
    repository.check(create=True)
    return repository


@pytest.fixture
def receiver(repo, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    app = PushReceiver(repo, {}, "lz4", str(spool), TAG)
    yield app
    app.close()


def push_blob(app, data):
    status, headers, _body = call(app, "POST", "/v2/%s/blobs/uploads/" % ENGINE_NAME)
    assert status == 202 and headers["Location"].startswith("http://127.0.0.1:%d/v2/%s/blobs/uploads/" % (ENGINE_PORT, ENGINE_NAME))
    path = headers["Location"][len("http://127.0.0.1:%d" % ENGINE_PORT):]
    return call(app, "PUT", path, data, "digest=" + digest(data).replace(":", "%3A"))


def test_a_gzip_layer_is_stored_by_diff_id_and_recorded_so_the_next_push_skips_it(repo, receiver, tmp_path):
    tar = layer_tar(os.urandom(200000))
    blob = gzip.compress(tar)
    assert call(receiver, "HEAD", "/v2/%s/blobs/%s" % (ENGINE_NAME, digest(blob)))[0] == 404
    status, headers, _body = push_blob(receiver, blob)
    assert status == 201 and headers["Docker-Content-Digest"] == digest(blob)
    diff_id = sha256_hex(tar)
    assert blob_key(diff_id, "lz4") in repo.remote.stat([blob_key(diff_id, "lz4")])
    assert list(receiver.stored) == [diff_id]
    record = PushRecord.from_bytes(repo.remote.get(pushed_key(digest(blob))), "record")
    assert (record.blob_size, record.layer.oid, record.layer.size) == (len(blob), diff_id, len(tar))
    # a later push (another receiver) is told the remote has it, from the record alone
    again = PushReceiver(repo, {}, "lz4", str(tmp_path / "spool"), TAG)
    status, headers, _body = call(again, "HEAD", "/v2/%s/blobs/%s" % (ENGINE_NAME, digest(blob)))
    assert status == 200 and headers["Content-Length"] == str(len(blob))


def test_a_record_whose_layer_is_gone_is_not_trusted(repo, receiver):
    blob = gzip.compress(layer_tar(b"x" * 5000))
    push_blob(receiver, blob)
    stored = next(iter(receiver.stored))
    repo.remote.delete(blob_key(stored, "lz4"))
    fresh = PushReceiver(repo, {}, "lz4", receiver.spool_dir, TAG)
    assert call(fresh, "HEAD", "/v2/%s/blobs/%s" % (ENGINE_NAME, digest(blob)))[0] == 404


def test_a_size_only_record_of_the_registry_api_names_no_layer_so_docker_must_send_the_blob(repo, receiver):
    # The registry API writes {"blob_size": N} for a blob it kept as pushed without decoding it (not a layer, or a
    # bomb): the same pushed/ key, but no layer this endpoint could put in the image's manifest.
    blob = gzip.compress(layer_tar(b"w" * 5000))
    repo.remote.put(pushed_key(digest(blob)), PushRecord(len(blob)).to_bytes())
    status, _headers, _body = call(receiver, "HEAD", "/v2/%s/blobs/%s" % (ENGINE_NAME, digest(blob)))
    assert status == 404, "a size-only record answered HEAD with %d" % status
    assert push_blob(receiver, blob)[0] == 201
    record = PushRecord.from_bytes(repo.remote.get(pushed_key(digest(blob))), "record")
    assert record.layer is not None and record.layer.oid in receiver.stored      # the layer record replaces it


def test_a_blob_that_is_not_what_its_digest_says_is_refused_and_nothing_is_stored(repo, receiver):
    blob = gzip.compress(layer_tar(b"y" * 5000))
    status, headers, _body = call(receiver, "POST", "/v2/%s/blobs/uploads/" % ENGINE_NAME)
    path = headers["Location"][len("http://127.0.0.1:%d" % ENGINE_PORT):]
    status, _headers, body = call(receiver, "PUT", path, blob, "digest=sha256:" + "0" * 64)
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert not receiver.stored and not list(repo.remote.list("pushed/"))


def test_a_layer_the_remote_has_is_not_stored_again(repo, tmp_path):
    tar = layer_tar(b"z" * 8000)
    diff_id = sha256_hex(tar)
    repo.remote.put(blob_key(diff_id), tar)
    present = {diff_id: LayerEntry(diff_id, 0, "none", len(tar))}
    app = PushReceiver(repo, present, "lz4", str(tmp_path), TAG)
    blob = gzip.compress(tar)
    assert push_blob(app, blob)[0] == 201
    assert not app.stored and blob_key(diff_id, "lz4") not in repo.remote.stat([blob_key(diff_id, "lz4")])
    assert app.received[digest(blob)][1] == LayerEntry(diff_id, len(tar), "none", len(tar))


def image_manifest(config, blobs):
    return canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(b),
                                       "size": len(b)} for b in blobs]})


def test_the_image_is_assembled_from_what_docker_sent_in_the_config_order(receiver):
    tars = [layer_tar(os.urandom(3000)), layer_tar(os.urandom(4000))]
    blobs = [gzip.compress(t) for t in tars]
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256_hex(t) for t in tars]}})
    for blob in blobs + [config]:
        assert push_blob(receiver, blob)[0] == 201
    manifest = image_manifest(config, blobs)
    assert call(receiver, "PUT", "/v2/%s/manifests/another-tag" % ENGINE_NAME, manifest)[0] == 404
    status, headers, _body = call(receiver, "PUT", "/v2/%s/manifests/%s" % (ENGINE_NAME, TAG), manifest)
    assert status == 201 and headers["Docker-Content-Digest"] == digest(manifest)
    _parsed, got_config, layers = receiver.image(lambda config_hex: pytest.fail("the config was sent"))
    assert got_config == config and [layer.oid for layer in layers] == [sha256_hex(t) for t in tars]


def test_a_manifest_whose_layers_are_not_its_configs_is_refused(receiver):
    tars = [layer_tar(b"a" * 3000), layer_tar(b"b" * 3000)]
    blobs = [gzip.compress(t) for t in tars]
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256_hex(t) for t in tars[::-1]]}})
    for blob in blobs + [config]:
        push_blob(receiver, blob)
    call(receiver, "PUT", "/v2/%s/manifests/%s" % (ENGINE_NAME, TAG), image_manifest(config, blobs))
    with pytest.raises(FormatError, match="is not sha256:"):
        receiver.image(lambda config_hex: b"")


def test_a_manifest_naming_a_blob_that_was_not_pushed_is_refused(receiver):
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": []}})
    push_blob(receiver, config)
    status, _headers, body = call(receiver, "PUT", "/v2/%s/manifests/%s" % (ENGINE_NAME, TAG),
                                  image_manifest(config, [b"never sent"]))
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_requests_under_another_name_are_not_answered(receiver):
    app = only_under(ENGINE_NAME, receiver)
    assert call(app, "GET", "/v2/")[0] == 200
    assert call(app, "POST", "/v2/someone/else/blobs/uploads/")[0] == 404


def stored_image(repo, payloads):
    layers = []
    tars = [layer_tar(p) for p in payloads]
    for tar in tars:
        enc = encoder("lz4")
        data = enc.update(tar) + enc.finish()
        layer = LayerEntry(sha256_hex(tar), len(tar), "lz4", len(data))
        repo.remote.put(layer.key, data)
        layers.append(layer)
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer.oid for layer in layers]}})
    return Manifest(sha256_hex(config), len(config), tuple(layers)), config, tars


def test_the_pull_side_serves_one_image_by_its_digest_each_layer_verified(repo):
    manifest, config, tars = stored_image(repo, [os.urandom(50000), b"text " * 20000])
    served = []
    app = PullServer(repo, manifest, config, served.append)
    status, headers, body = call(app, "GET", "/v2/%s/manifests/%s" % (ENGINE_NAME, app.digest))
    assert status == 200 and body == manifest.oci_bytes() and headers["Docker-Content-Digest"] == app.digest
    assert call(app, "GET", "/v2/%s/manifests/latest" % ENGINE_NAME)[0] == 404
    assert call(app, "GET", "/v2/%s/blobs/sha256:%s" % (ENGINE_NAME, manifest.config_oid))[2] == config
    for layer, tar in zip(manifest.layers, tars):
        status, headers, body = call(app, "GET", "/v2/%s/blobs/sha256:%s" % (ENGINE_NAME, layer.oid))
        assert status == 200 and body == tar and headers["Content-Length"] == str(len(tar))
    assert [layer.oid for layer in served] == [layer.oid for layer in manifest.layers] and app.served


def test_a_corrupt_layer_is_cut_short_before_its_last_piece(repo):
    manifest, config, tars = stored_image(repo, [os.urandom(3 << 20)])
    layer = manifest.layers[0]
    path = os.path.join(repo.remote.root, layer.key)
    with open(path, "r+b") as stored:
        stored.seek(layer.stored_size // 2)
        byte = stored.read(1)
        stored.seek(layer.stored_size // 2)
        stored.write(bytes([byte[0] ^ 0xFF]))
    app = PullServer(repo, manifest, config)
    received = []

    def start_response(status, headers):
        pass
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/%s/blobs/sha256:%s" % (ENGINE_NAME, layer.oid)}, start_response)
    with pytest.raises(BlobCorruptError):
        for chunk in body:
            received.append(chunk)
    assert sum(len(c) for c in received) < len(tars[0])
    assert app.failed_layers == [layer] and not app.served


def test_the_server_answers_on_loopback_and_stops(repo):
    manifest, config, _tars = stored_image(repo, [b"q" * 1000])
    server = LoopbackServer(only_under(ENGINE_NAME, PullServer(repo, manifest, config)), ports=(0,))
    host, port = server.host.split(":")
    try:
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


@pytest.mark.parametrize("host,shares", [
    ("tcp://127.0.0.1:2375", True), ("tcp://localhost:2375", True), ("https://[::1]:2376", True),
    ("tcp://10.1.2.3:2375", False), ("tcp://docker.example.com:2376", False), ("ssh://deploy@build", False),
])
def test_which_daemons_share_our_loopback_by_address(host, shares):
    assert _shares_our_loopback(host) is shares


@pytest.mark.parametrize("host,shares", [("tcp://127.0.0.1:2376", True), ("tcp://docker.example.com:2376", False)])
def test_a_daemon_reached_over_tls_shares_our_loopback_only_on_a_loopback_address(host, shares):
    # TLS secures the API connection only: a daemon on our loopback reaches the endpoint (plain http on
    # 127.0.0.1) as any other; one on another host cannot, and the engine keeps docker save / load for it.
    daemon = Daemon(host, tls=tls_config(verify=False), api_version="1.41")     # a fixed version: no request made
    assert daemon.api.base_url.startswith("https://")
    assert daemon.reaches_our_loopback is shares


def test_a_unix_socket_served_in_our_namespace_shares_our_loopback(tmp_path):
    path = str(tmp_path / "docker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def accept_one():
        listener.accept()[0].close()
    accepted = threading.Thread(target=accept_one, daemon=True)
    accepted.start()
    try:
        assert _shares_our_loopback("unix://" + path) is True
        accepted.join(10)
        assert _shares_our_loopback("unix://" + str(tmp_path / "absent.sock")) is False
    finally:
        listener.close()


def test_the_endpoint_holds_a_burst_of_connections_in_its_backlog(repo):
    """Docker opens a dozen connections at once; a listen backlog of cheroot's default 5 dropped some,
    and each dropped connection waited a second for its SYN to be sent again."""
    import shutil
    import subprocess
    manifest, config, _tars = stored_image(repo, [b"q" * 1000])
    server = LoopbackServer(only_under(ENGINE_NAME, PullServer(repo, manifest, config)), ports=(0,))
    try:
        port = server.host.rpartition(":")[2]
        listing = subprocess.run([shutil.which("ss") or "/usr/bin/ss", "-ltnH", "sport = :%s" % port],
                                 stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.split()
        assert listing[0] == "LISTEN" and int(listing[2]) >= 64, listing    # Send-Q of a listener: its backlog
    finally:
        server.close()
