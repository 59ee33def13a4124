"""The registry API's write side (uploads, manifests) over a directory remote: no sockets, no Docker.

Requests go through RegistryApi.handle as the server hands them over; bodies are file objects."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._format import PUSHED_PREFIX, canonical_json, parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry_api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry_push import (
    PushedLayer, RegistryWriter,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._repository import Repository

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def layer_tar(name, payload):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(payload), 946684800
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Image:
    """A two-layer image as Docker pushes it: gzip layers, a config naming their diff_ids."""

    def __init__(self, payloads=(b"base" * 1000, b"top")):
        self.tars = [layer_tar("f%d" % i, p) for i, p in enumerate(payloads)]
        self.blobs = [gzip.compress(t, mtime=0) for t in self.tars]
        self.config = canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                                      "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in self.tars]}})

    def manifest(self, layers=None, media_type=DOCKER_MANIFEST):
        return json.dumps({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(self.config),
                       "size": len(self.config)},
            "layers": layers if layers is not None else [
                {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(b), "size": len(b)}
                for b in self.blobs],
        }).encode()


@pytest.fixture
def api(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    writer = RegistryWriter(repo, str(tmp_path))
    yield RegistryApi(repo, writer=writer)
    writer.close()


def call(api, method, path, body=b"", query=None, headers=None):
    headers = {k.lower(): [v] for k, v in (headers or {}).items()}
    if body is not None:
        headers.setdefault("content-length", [str(len(body))])
    response = api.handle(method, path, query or {}, headers, body=io.BytesIO(body) if body is not None else None)
    payload = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    return response.status, dict(response.headers), payload


def upload(api, name, blob, chunks=1):
    status, headers, _body = call(api, "POST", "/v2/%s/blobs/uploads/" % name)
    assert status == 202 and headers["Range"] == "0-0"
    location = headers["Location"]
    step = max(1, -(-len(blob) // chunks))
    for start in range(0, len(blob), step):
        piece = blob[start:start + step]
        status, headers, _body = call(api, "PATCH", location, piece,
                                      headers={"Content-Range": "%d-%d" % (start, start + len(piece) - 1)})
        assert status == 202 and headers["Range"] == "0-%d" % (start + len(piece) - 1)
    status, headers, body = call(api, "PUT", location, b"", query={"digest": sha(blob)})
    assert status == 201, body
    assert headers["Docker-Content-Digest"] == sha(blob)
    return headers["Location"]


def push(api, name, tag, image):
    for blob in image.blobs + [image.config]:
        upload(api, name, blob)
    return call(api, "PUT", "/v2/%s/manifests/%s" % (name, tag), image.manifest(),
                headers={"Content-Type": DOCKER_MANIFEST})


def test_push_stores_layers_decoded_and_the_image_pulls_back_with_its_config_digest(api):
    image = Image()
    status, headers, _body = push(api, "app", "1", image)
    assert status == 201
    repo = api.repo
    oid = repo.read_tag(parse_image_ref("app:1"))
    manifest = repo.read_manifest(oid)
    assert manifest.image_id == sha(image.config)
    assert [layer.oid for layer in manifest.layers] == [sha(t)[7:] for t in image.tars]
    assert all(layer.encoding == "lz4" for layer in manifest.layers)
    # What a pull through the API gets: the digest the push answered, the layers as tars.
    # The push is answered with the digest of what was sent (clients check it); the image is served
    # in its canonical form, whose digest is the same however it was pushed.
    assert headers["Docker-Content-Digest"] == sha(image.manifest())
    status, served, body = call(api, "GET", "/v2/app/manifests/1", None)
    assert status == 200 and served["Docker-Content-Digest"] == sha(manifest.oci_bytes())
    for descriptor, tar in zip(json.loads(body)["layers"], image.tars):
        assert call(api, "GET", "/v2/app/blobs/" + descriptor["digest"], None)[2] == tar


def test_existence_checks_of_pushed_blobs_are_answered_after_a_restart(api, tmp_path):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    again = RegistryApi(api.repo, writer=RegistryWriter(Repository(api.repo.remote), str(tmp_path)))
    for blob in image.blobs:
        status, headers, _body = call(again, "HEAD", "/v2/app/blobs/" + sha(blob), None)
        assert status == 200 and headers["Content-Length"] == str(len(blob))
        # the compressed bytes are not kept: a GET says where the layer is instead
        status, _h, body = call(again, "GET", "/v2/app/blobs/" + sha(blob), None)
        assert status == 404 and b"stored decoded" in body
    # Another image sharing the base: only its new layer and config need uploading.
    update = Image((b"base" * 1000, b"new top"))
    upload(again, "app", update.blobs[1])
    upload(again, "app", update.config)
    assert call(again, "PUT", "/v2/app/manifests/2", update.manifest())[0] == 201
    # a cross-repository mount of a pushed layer is answered without an upload
    status, headers, _body = call(again, "POST", "/v2/other/blobs/uploads/", None,
                                  query={"mount": sha(image.blobs[0]), "from": "app"})
    assert status == 201 and headers["Location"] == "/v2/other/blobs/" + sha(image.blobs[0])
    again.writer.close()


def test_chunked_monolithic_and_streamed_uploads(api):
    blob = os.urandom(3000)
    upload(api, "app", blob, chunks=3)
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/", blob, query={"digest": sha(blob)})
    assert status == 201
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    location = headers["Location"]
    assert call(api, "PATCH", location, blob[:1000])[0] == 202        # streamed: no Content-Range
    assert call(api, "GET", location, None)[1]["Range"] == "0-999"
    assert call(api, "PUT", location, blob[1000:], query={"digest": sha(blob)})[0] == 201
    # a blob that is not a layer waits for its manifest, and is served meanwhile
    assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob


@pytest.mark.parametrize("case", ["digest", "order", "unknown", "algorithm", "cancelled", "size"])
def test_bad_uploads_are_refused(api, case):
    blob = b"x" * 100
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    location = headers["Location"]
    if case == "digest":
        status, _h, body = call(api, "PUT", location, blob, query={"digest": sha(b"other")})
        expected, code = 400, "DIGEST_INVALID"
    elif case == "order":
        call(api, "PATCH", location, blob[:10], headers={"Content-Range": "0-9"})
        status, headers, body = call(api, "PATCH", location, blob[20:30], headers={"Content-Range": "20-29"})
        expected, code = 416, "BLOB_UPLOAD_INVALID"
        assert headers["Range"] == "0-9"
    elif case == "unknown":
        status, _h, body = call(api, "PATCH", "/v2/app/blobs/uploads/" + "0" * 32, blob)
        expected, code = 404, "BLOB_UPLOAD_UNKNOWN"
    elif case == "algorithm":
        status, _h, body = call(api, "PUT", location, blob, query={"digest": "sha512:" + "0" * 128})
        expected, code = 400, "DIGEST_INVALID"
    elif case == "cancelled":
        assert call(api, "DELETE", location, None)[0] == 204
        status, _h, body = call(api, "PUT", location, blob, query={"digest": sha(blob)})
        expected, code = 404, "BLOB_UPLOAD_UNKNOWN"
    else:
        api.writer.max_blob = 50
        status, _h, body = call(api, "PATCH", location, blob)
        expected, code = 413, "SIZE_INVALID"
    assert status == expected and json.loads(body)["errors"][0]["code"] == code
    if case in ("order", "unknown", "algorithm"):     # the upload itself goes on: the client may retry
        assert call(api, "GET", location, None)[0] == 204
        assert call(api, "DELETE", location, None)[0] == 204
    assert os.listdir(api.writer.spool) == [], "a refused or cancelled upload leaves nothing behind"


@pytest.mark.parametrize("case", ["missing layer", "wrong diff_id", "index", "missing config", "layer count",
                                  "malformed", "foreign layer", "wrong digest"])
def test_bad_manifests_are_refused_and_no_tag_is_written(api, case):
    image = Image()
    for blob in image.blobs + [image.config]:
        upload(api, "app", blob)
    body = image.manifest()
    if case == "missing layer":
        body = Image((b"base" * 1000, b"never uploaded")).manifest()
        upload(api, "app", Image((b"base" * 1000, b"never uploaded")).config)
        expected, code = 400, "MANIFEST_BLOB_UNKNOWN"
    elif case == "wrong diff_id":
        swapped = json.loads(body)
        swapped["layers"].reverse()
        body = json.dumps(swapped).encode()
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "index":
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": []}).encode()
        expected, code = 415, "MANIFEST_INVALID"
    elif case == "missing config":
        doc = json.loads(body)
        doc["config"]["digest"] = sha(b"no such config")
        body = json.dumps(doc).encode()
        expected, code = 400, "MANIFEST_BLOB_UNKNOWN"
    elif case == "layer count":
        doc = json.loads(body)
        doc["layers"] = doc["layers"][:1]
        body = json.dumps(doc).encode()
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "malformed":
        body = b'{"schemaVersion": 2, "mediaType": "%s", "layers": 7}' % DOCKER_MANIFEST.encode()
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "foreign layer":
        doc = json.loads(body)
        doc["layers"][0]["mediaType"] = "application/vnd.example.not-a-layer"
        body = json.dumps(doc).encode()
        expected, code = 400, "MANIFEST_INVALID"
    else:   # pushed by digest, with other bytes
        status, _h, payload = call(api, "PUT", "/v2/app/manifests/" + sha(b"other"), body)
        assert status == 400 and json.loads(payload)["errors"][0]["code"] == "DIGEST_INVALID"
        expected, code = 201, None
    status, _h, payload = call(api, "PUT", "/v2/app/manifests/1", body, headers={"Content-Type": DOCKER_MANIFEST})
    if code is None:
        assert status == expected
        return
    assert status == expected and json.loads(payload)["errors"][0]["code"] == code, payload
    assert api.repo.read_tag(parse_image_ref("app:1")) is None


def test_a_blob_that_claims_to_be_gzip_but_is_not_is_refused(api):
    blob = b"\x1f\x8b" + os.urandom(200)
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    status, _h, body = call(api, "PUT", headers["Location"], blob, query={"digest": sha(blob)})
    assert status == 400 and json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert not any(key.startswith(PUSHED_PREFIX) for key in (info.key for info in api.repo.remote.list("")))


def test_a_record_whose_layer_is_gone_is_not_trusted(api, tmp_path):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    record = PushedLayer.from_record(api.repo.remote.get(PUSHED_PREFIX + sha(image.blobs[1])[7:]), "test")
    os.unlink(os.path.join(api.repo.remote.root, record.layer.key))
    fresh = RegistryWriter(Repository(api.repo.remote), str(tmp_path))
    assert fresh.pushed_layer(sha(image.blobs[1])[7:]) is None       # so Docker uploads it again
    assert fresh.pushed_layer(sha(image.blobs[0])[7:]).layer.oid == sha(image.tars[0])[7:]
    fresh.close()


def test_tags_are_deleted_by_name_and_writes_are_refused_when_read_only(api):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    assert call(api, "DELETE", "/v2/app/manifests/1", None)[0] == 202
    assert api.repo.read_tag(parse_image_ref("app:1")) is None
    assert call(api, "DELETE", "/v2/app/manifests/1", None)[0] == 404
    read_only = RegistryApi(api.repo)
    status, _h, body = call(read_only, "POST", "/v2/app/blobs/uploads/")
    assert status == 405 and b"read-only" in body


def test_a_blob_gone_from_the_remote_is_not_vouched_for_to_a_push(api):
    """A pull taught the API the image's blobs; a prune then removed them. A push's existence check
    must say 404, so the client sends the blob again, instead of a manifest naming a missing layer."""
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    manifest = api.repo.read_manifest(api.repo.read_tag(parse_image_ref("app:1")))
    layer = manifest.layers[0]
    assert call(api, "GET", "/v2/app/manifests/1", None)[0] == 200          # learnt
    assert call(api, "HEAD", "/v2/app/blobs/sha256:" + layer.oid, None)[0] == 200
    os.unlink(os.path.join(api.repo.remote.root, layer.key))
    assert call(api, "HEAD", "/v2/app/blobs/sha256:" + layer.oid, None)[0] == 404
    status, _h, _body = call(api, "POST", "/v2/other/blobs/uploads/", None,
                             query={"mount": "sha256:" + layer.oid, "from": "app"})
    assert status == 202        # not mounted: an upload starts instead


def test_uploads_in_progress_are_bounded_and_unclaimed_blobs_expire(api, monkeypatch):
    from ansible_collections.dogestry.dogestry.plugins.module_utils import _registry_push
    monkeypatch.setattr(_registry_push, "MAX_UPLOADS", 3)
    locations = [call(api, "POST", "/v2/app/blobs/uploads/")[1]["Location"] for _i in range(3)]
    status, _h, body = call(api, "POST", "/v2/app/blobs/uploads/")
    assert status == 429 and json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    for location in locations:
        assert call(api, "DELETE", location, None)[0] == 204
    blob = b'{"not": "a layer"}'
    now = [0.0]
    api.writer.clock = lambda: now[0]
    assert call(api, "POST", "/v2/app/blobs/uploads/", blob, query={"digest": sha(blob)})[0] == 201
    assert call(api, "HEAD", "/v2/app/blobs/" + sha(blob), None)[0] == 200
    now[0] = 2 * 3600.0             # an hour past: no manifest claimed it
    assert call(api, "POST", "/v2/app/blobs/uploads/")[0] == 202
    assert call(api, "HEAD", "/v2/app/blobs/" + sha(blob), None)[0] == 404
