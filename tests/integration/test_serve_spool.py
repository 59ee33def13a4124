"""Where the accelerator spools what is pushed to it. A directory remote takes a finished blob by
link() (create-only and atomic), which fails across filesystems (and across mounts of one: systemd's
PrivateTmp and ReadWritePaths are bind mounts), so the spool must be where the remote can link from."""

import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import tarfile
import tempfile

import pytest

from conftest import free_port
from dogestry_cli import dogestry


@pytest.fixture
def other_filesystem(tmp_path):
    """A directory on another filesystem than tmp_path (where the remotes are): /dev/shm, a tmpfs."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(str(tmp_path)).st_dev:
        pytest.fail("this test needs /dev/shm on another filesystem than %s" % tmp_path, pytrace=False)
    path = tempfile.mkdtemp(prefix="dogestry-test-spool-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _layer():
    """A gzip-compressed layer (as docker push sends one) and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = b"pushed through a spool on the remote's filesystem\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(data), 946684800
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _send(server, method, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=dict({"Content-Type": "application/octet-stream"}, **(headers or {})))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_push_into_a_directory_remote_while_the_temp_dir_is_another_filesystem(tmp_path, servers, other_filesystem):
    remote = str(tmp_path / "remote")
    server = servers(remote, tmp_path, env={"TMPDIR": other_filesystem})
    layer, diff_id = _layer()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    for blob in (layer, config):      # monolithic uploads, as skopeo and containerd send small blobs
        status, body = _send(server, "POST", "/v2/app/blobs/uploads/?digest=" + _digest(blob), blob)
        assert status == 201, body
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(layer),
                    "size": len(layer)}]}).encode()
    status, body = _send(server, "PUT", "/v2/app/manifests/1", manifest,
                         {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, body
    tags = json.loads(dogestry("tags", remote, "--json").stdout)["tags"]
    assert "app:1" in tags, tags
    dogestry("verify", remote)
    assert os.listdir(other_filesystem) == [], "nothing is spooled in the temp dir"


def test_a_spool_dir_the_remote_cannot_link_from_is_refused_at_start(tmp_path, other_filesystem):
    remote = str(tmp_path / "remote")
    refused = dogestry("serve", remote, "--listen", "127.0.0.1:%d" % free_port(), "--spool-dir", other_filesystem,
                       check=False, timeout=60)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    error = refused.stderr.splitlines()[-1]     # after the warning that the remote holds no image yet
    assert error.startswith("dogestry: error: --spool-dir %s is on another filesystem than the remote %s"
                            % (other_filesystem, remote)), refused.stderr
    assert os.listdir(other_filesystem) == [], "the refused spool is left as it was"
