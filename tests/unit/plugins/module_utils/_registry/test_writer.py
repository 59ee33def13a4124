"""The registry API's write side (uploads, manifests) over a directory remote: no sockets, no Docker.

Requests go through RegistryApi.handle as the server hands them over; bodies are file objects."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import ImageReferenceError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import PUSHED_PREFIX, canonical_json, object_key, pushed_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import PushRecord
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.writer import RegistryWriter
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


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


def test_push_is_served_as_pushed_and_stored_decoded_for_the_engine(api):
    image = Image()
    status, headers, _body = push(api, "app", "1", image)
    assert status == 201 and headers["Docker-Content-Digest"] == sha(image.manifest())
    # A pull through the API gets exactly what was pushed: the manifest by tag and by digest, the gzip layers.
    for ref in ("1", sha(image.manifest())):
        status, served, body = call(api, "GET", "/v2/app/manifests/" + ref, None)
        assert status == 200 and body == image.manifest() and served["Docker-Content-Digest"] == sha(image.manifest())
        assert served["Content-Type"] == DOCKER_MANIFEST
    for blob in image.blobs + [image.config]:
        assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob
    # The engine's thin path: the tag resolves to a dogestry manifest of the decoded layers (lz4, by diff_id).
    repo = api.repo
    assert repo.read_tag(parse_image_ref("app:1")) is None        # the tag names OCI content
    ref, oid = repo.resolve("app:1")
    manifest = repo.read_manifest(oid)
    assert manifest.image_id == sha(image.config)
    assert [layer.oid for layer in manifest.layers] == [sha(t)[7:] for t in image.tars]
    assert all(layer.encoding == "lz4" for layer in manifest.layers)
    assert json.loads(repo.remote.get("dogestry.json"))["version"] == 2


def test_existence_checks_of_pushed_blobs_are_answered_after_a_restart(api, tmp_path):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    again = RegistryApi(api.repo, writer=RegistryWriter(Repository(api.repo.remote), str(tmp_path)))
    for blob in image.blobs:
        status, headers, _body = call(again, "HEAD", "/v2/app/blobs/" + sha(blob), None)
        assert status == 200 and headers["Content-Length"] == str(len(blob))
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
    # a blob is stored as pushed, and served before any manifest names it
    assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob


@pytest.mark.parametrize("case", ["digest", "order", "last chunk order", "unknown", "algorithm", "cancelled", "size"])
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
    elif case == "last chunk order":     # the closing PUT may carry the last chunk: it must follow too
        call(api, "PATCH", location, blob[:10], headers={"Content-Range": "0-9"})
        status, headers, body = call(api, "PUT", location, blob[50:], query={"digest": sha(blob)},
                                     headers={"Content-Range": "50-99"})
        expected, code = 416, "BLOB_UPLOAD_INVALID"
        assert headers["Range"] == "0-9"
    elif case == "unknown":
        status, _h, body = call(api, "PATCH", "/v2/app/blobs/uploads/" + "0" * 32, blob)
        expected, code = 404, "BLOB_UPLOAD_UNKNOWN"
    elif case == "algorithm":
        status, _h, body = call(api, "PUT", location, blob, query={"digest": "md5:" + "0" * 32})
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
    if case in ("order", "last chunk order", "unknown", "algorithm"):     # the upload goes on: the client may retry
        assert call(api, "GET", location, None)[0] == 204
        assert call(api, "DELETE", location, None)[0] == 204
    assert os.listdir(api.writer.spool) == [], "a refused or cancelled upload leaves nothing behind"


@pytest.mark.parametrize("case", ["missing layer", "missing config", "malformed", "wrong digest", "index of unknown",
                                  "content type", "not json", "unknown media type"])
def test_bad_manifests_are_refused_and_no_tag_is_written(api, case):
    image = Image()
    for blob in image.blobs + [image.config]:
        upload(api, "app", blob)
    body = image.manifest()
    content_type = DOCKER_MANIFEST
    if case == "missing layer":
        body = Image((b"base" * 1000, b"never uploaded")).manifest()
        upload(api, "app", Image((b"base" * 1000, b"never uploaded")).config)
        expected, code = 400, "MANIFEST_BLOB_UNKNOWN"
    elif case == "missing config":
        doc = json.loads(body)
        doc["config"]["digest"] = sha(b"no such config")
        body = json.dumps(doc).encode()
        expected, code = 400, "MANIFEST_BLOB_UNKNOWN"
    elif case == "malformed":
        body = b'{"schemaVersion": 2, "mediaType": "%s", "layers": 7}' % DOCKER_MANIFEST.encode()
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "index of unknown":
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha(b"never pushed"), "size": 12}]}).encode()
        expected, code, content_type = 400, "MANIFEST_UNKNOWN", OCI_INDEX
    elif case == "content type":
        content_type = OCI_MANIFEST        # the body says Docker's type
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "not json":
        body = b"\x00" * 40
        expected, code = 400, "MANIFEST_INVALID"
    elif case == "unknown media type":
        doc = json.loads(body)
        doc["mediaType"] = content_type = "application/vnd.example.whatever"
        body = json.dumps(doc).encode()
        expected, code = 400, "MANIFEST_INVALID"
    else:   # pushed by digest, with other bytes
        status, _h, payload = call(api, "PUT", "/v2/app/manifests/" + sha(b"other"), body)
        assert status == 400 and json.loads(payload)["errors"][0]["code"] == "DIGEST_INVALID"
        expected, code = 201, None
    status, _h, payload = call(api, "PUT", "/v2/app/manifests/1", body, headers={"Content-Type": content_type})
    if code is None:
        assert status == expected
        return
    assert status == expected and json.loads(payload)["errors"][0]["code"] == code, payload
    assert api.repo.read_target(parse_image_ref("app:1")) is None


@pytest.mark.parametrize("case", ["wrong diff_id", "layer count", "not a layer type"])
def test_manifests_that_are_not_loadable_images_are_kept_as_pushed_but_not_decoded(api, case):
    """A registry stores what it is given; only dogestry's own pulls need an image they can load."""
    image = Image()
    for blob in image.blobs + [image.config]:
        upload(api, "app", blob)
    doc = json.loads(image.manifest())
    if case == "wrong diff_id":
        doc["layers"].reverse()
    elif case == "layer count":
        doc["layers"] = doc["layers"][:1]
    else:
        doc["layers"][0]["mediaType"] = "application/vnd.example.not-a-layer"
    body = json.dumps(doc).encode()
    assert call(api, "PUT", "/v2/app/manifests/1", body, headers={"Content-Type": DOCKER_MANIFEST})[0] == 201
    assert call(api, "GET", "/v2/app/manifests/1", None)[2] == body
    with pytest.raises(ImageReferenceError, match="not an image this collection can load"):
        api.repo.resolve("app:1")
    assert not list(api.repo.remote.list("manifests/")), "no dogestry manifest was written"


@pytest.mark.parametrize("decoders", [16, 0], ids=["decoded while arriving", "decoders busy"])
def test_layers_are_decoded_while_they_arrive_or_after_the_last_byte(tmp_path, monkeypatch, decoders):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._registry import writer as _registry_writer
    from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import decoder
    monkeypatch.setattr(_registry_writer, "MAX_DECODERS", decoders)     # the writer's decoder slots
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    writer = RegistryWriter(repo, str(tmp_path))
    api = RegistryApi(repo, writer=writer)
    image = Image((os.urandom(3 << 20), b"top" * 100))     # a layer of several chunks, sent in several PATCHes
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    location = headers["Location"]
    blob = image.blobs[0]
    half = len(blob) // 2
    assert call(api, "PATCH", location, blob[:half], headers={"Content-Range": "0-%d" % (half - 1)})[0] == 202
    session = location.rsplit("/", 1)[1]
    assert (writer._uploads[session].decoder is not None) == bool(decoders)
    assert call(api, "PUT", location, blob[half:], query={"digest": sha(blob)})[0] == 201
    for blob in image.blobs[1:] + [image.config]:
        upload(api, "app", blob)
    assert call(api, "PUT", "/v2/app/manifests/1", image.manifest(), headers={"Content-Type": DOCKER_MANIFEST})[0] == 201
    manifest = repo.read_manifest(repo.resolve("app:1")[1])
    for layer, tar in zip(manifest.layers, image.tars):
        assert layer.oid == sha(tar)[7:] and layer.encoding == "lz4"
        with open(os.path.join(repo.remote.root, layer.key), "rb") as stored:
            lz4 = decoder(layer.encoding, layer.key)
            assert b"".join(lz4.decode(stored.read())) + lz4.finish() == tar
    assert os.listdir(writer.spool) == []           # no upload or decoded spool left behind
    writer.close()


@pytest.mark.parametrize("ending", ["wrong digest", "cancelled"])
def test_a_layer_being_decoded_leaves_nothing_behind_when_its_upload_fails(api, ending):
    blob = Image((os.urandom(2 << 20),)).blobs[0]
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    location = headers["Location"]
    assert call(api, "PATCH", location, blob)[0] == 202
    if ending == "cancelled":
        assert call(api, "DELETE", location, None)[0] == 204
    else:
        status, _h, body = call(api, "PUT", location, b"", query={"digest": sha(blob + b"x")})
        assert status == 400 and json.loads(body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert os.listdir(api.writer.spool) == []
    assert list(api.repo.remote.list("")) == []      # nothing stored: no blob, no decoded layer, no record


def test_a_blob_that_claims_to_be_gzip_but_is_not_is_kept_as_pushed_only(api):
    blob = b"\x1f\x8b" + os.urandom(200)
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/")
    status, _h, body = call(api, "PUT", headers["Location"], blob, query={"digest": sha(blob)})
    assert status == 201
    assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob
    assert not any(key.startswith(PUSHED_PREFIX) for key in (info.key for info in api.repo.remote.list("")))


def test_a_record_whose_layer_is_gone_is_not_trusted(api, tmp_path):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    record = PushRecord.from_bytes(api.repo.remote.get(pushed_key(sha(image.blobs[1]))), "test")
    os.unlink(os.path.join(api.repo.remote.root, record.layer.key))
    fresh = RegistryWriter(Repository(api.repo.remote), str(tmp_path))
    assert fresh.pushed_layer(sha(image.blobs[1])) is None       # so Docker uploads it again
    assert fresh.pushed_layer(sha(image.blobs[0])).layer.oid == sha(image.tars[0])[7:]
    fresh.close()


def test_tags_are_deleted_by_name_and_writes_are_refused_when_read_only(api):
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    assert call(api, "DELETE", "/v2/app/manifests/1", None)[0] == 202
    assert api.repo.read_target(parse_image_ref("app:1")) is None
    assert call(api, "DELETE", "/v2/app/manifests/1", None)[0] == 404
    read_only = RegistryApi(api.repo)
    status, _h, body = call(read_only, "POST", "/v2/app/blobs/uploads/")
    assert status == 405 and b"read-only" in body


def test_a_blob_gone_from_the_remote_is_not_vouched_for_to_a_push(api):
    """A prune removed a blob after the API served it: a push's existence check must say 404, so the
    client sends the blob again, instead of a manifest naming a missing layer."""
    image = Image()
    assert push(api, "app", "1", image)[0] == 201
    digest = sha(image.blobs[0])
    assert call(api, "HEAD", "/v2/app/blobs/" + digest, None)[0] == 200
    os.unlink(os.path.join(api.repo.remote.root, object_key(digest)))
    assert call(api, "HEAD", "/v2/app/blobs/" + digest, None)[0] == 404
    status, _h, _body = call(api, "POST", "/v2/other/blobs/uploads/", None, query={"mount": digest, "from": "app"})
    assert status == 202        # not mounted: an upload starts instead


def test_uploads_in_progress_are_bounded_and_unclaimed_blobs_expire(api, monkeypatch):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._registry import uploads as _registry_push
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
    assert len(list(api.repo.remote.list("leases/"))) == 1       # prune spares it until a manifest names it
    now[0] = 2 * 3600.0             # an hour past: no manifest claimed it, so prune may take it
    assert call(api, "POST", "/v2/app/blobs/uploads/")[0] == 202
    assert list(api.repo.remote.list("leases/")) == []


# ---- OCI content kept as pushed (format version 2) ---------------------------------------------

ARTIFACT = "application/vnd.example.sbom.v1"
EMPTY_CONFIG = b"{}"


def platform_image(arch, payload):
    image = Image((b"shared base" * 500, payload))
    doc = json.loads(image.config)
    doc["architecture"] = arch
    image.config = canonical_json(doc)
    return image


def push_by_digest(api, name, image, media_type=OCI_MANIFEST):
    for blob in image.blobs + [image.config]:
        upload(api, name, blob)
    body = image.manifest(media_type=media_type)
    status, headers, payload = call(api, "PUT", "/v2/%s/manifests/%s" % (name, sha(body)), body,
                                    headers={"Content-Type": media_type})
    assert status == 201, payload
    return body


def multi_platform(api, name="app", tag="multi"):
    amd64 = push_by_digest(api, name, platform_image("amd64", b"amd64 top"))
    arm64 = push_by_digest(api, name, platform_image("arm64", b"arm64 top"))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(body), "size": len(body),
         "platform": {"os": "linux", "architecture": arch}}
        for body, arch in ((amd64, "amd64"), (arm64, "arm64"))]}).encode()
    status, headers, payload = call(api, "PUT", "/v2/%s/manifests/%s" % (name, tag), index,
                                    headers={"Content-Type": OCI_INDEX})
    assert status == 201 and headers["Docker-Content-Digest"] == sha(index), payload
    return index, amd64, arm64


def artifact_for(api, name, subject_body, subject_type, payload=b"not a tar: an SBOM"):
    upload(api, name, payload)
    upload(api, name, EMPTY_CONFIG)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(EMPTY_CONFIG), "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": sha(payload), "size": len(payload)}],
        "subject": {"mediaType": subject_type, "digest": sha(subject_body), "size": len(subject_body)},
        "annotations": {"org.example.kind": "sbom"}}).encode()
    status, headers, _payload = call(api, "PUT", "/v2/%s/manifests/%s" % (name, sha(body)), body,
                                     headers={"Content-Type": OCI_MANIFEST})
    assert status == 201 and headers["OCI-Subject"] == sha(subject_body)
    return body


def test_a_multi_platform_index_is_served_as_pushed_and_the_engine_picks_the_platform(api):
    index, amd64, arm64 = multi_platform(api)
    status, headers, body = call(api, "GET", "/v2/app/manifests/multi", None)
    assert (status, body, headers["Content-Type"]) == (200, index, OCI_INDEX)
    for child in (amd64, arm64):
        assert call(api, "GET", "/v2/app/manifests/" + sha(child), None)[2] == child
    repo = api.repo
    configs = {}
    for platform in (("linux", "amd64", None), ("linux", "arm64", None)):
        _ref, oid = repo.resolve("app:multi", platform)
        configs[platform[1]] = json.loads(repo.read_config(repo.read_manifest(oid)))["architecture"]
    assert configs == {"amd64": "amd64", "arm64": "arm64"}
    with pytest.raises(ImageReferenceError, match="no image for linux/s390x"):
        repo.resolve("app:multi", ("linux", "s390x", None))
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.tags import describe_tags
    described, broken = describe_tags(repo, repo.list_targets("app"))
    assert broken == {} and described["app:multi"]["media_type"] == OCI_INDEX
    assert described["app:multi"]["image_id"] == sha(platform_image("amd64", b"amd64 top").config)


def test_artifacts_and_their_referrers(api):
    index, _amd64, _arm64 = multi_platform(api)
    sbom = artifact_for(api, "app", index, OCI_INDEX)
    status, headers, body = call(api, "GET", "/v2/app/referrers/" + sha(index), None)
    listed = json.loads(body)
    assert status == 200 and headers["Content-Type"] == OCI_INDEX and listed["mediaType"] == OCI_INDEX
    assert listed["manifests"] == [{"mediaType": OCI_MANIFEST, "digest": sha(sbom), "size": len(sbom),
                                    "artifactType": ARTIFACT, "annotations": {"org.example.kind": "sbom"}}]
    status, headers, body = call(api, "GET", "/v2/app/referrers/" + sha(index), None,
                                 query={"artifactType": "application/vnd.example.other"})
    assert json.loads(body)["manifests"] == [] and headers["OCI-Filters-Applied"] == "artifactType"
    # no referrers, or no such subject: an empty index, never 404
    status, _h, body = call(api, "GET", "/v2/app/referrers/" + sha(b"nothing"), None)
    assert status == 200 and json.loads(body)["manifests"] == []
    assert call(api, "GET", "/v2/app/blobs/" + sha(b"not a tar: an SBOM"), None)[2] == b"not a tar: an SBOM"
    call(api, "PUT", "/v2/app/manifests/sbom", sbom, headers={"Content-Type": OCI_MANIFEST})
    with pytest.raises(ImageReferenceError, match="artifact of type " + ARTIFACT):
        api.repo.resolve("app:sbom")


def test_sha512_and_empty_blobs(api):
    blob = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(blob).hexdigest()
    status, headers, _body = call(api, "POST", "/v2/app/blobs/uploads/", blob, query={"digest": digest})
    assert status == 201 and headers["Docker-Content-Digest"] == digest
    status, headers, body = call(api, "GET", "/v2/app/blobs/" + digest, None)
    assert (status, body, headers["Docker-Content-Digest"]) == (200, blob, digest)
    assert call(api, "GET", "/v2/app/blobs/" + digest, None, headers={"Range": "bytes=10-19"})[2] == blob[10:20]
    upload(api, "app", b"")
    assert call(api, "GET", "/v2/app/blobs/" + sha(b""), None)[:3:2] == (200, b"")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT,
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b""), "size": 0},
                           "layers": [{"mediaType": "application/octet-stream", "digest": digest,
                                       "size": len(blob)}]}).encode()
    manifest_digest = "sha512:" + hashlib.sha512(manifest).hexdigest()
    status, headers, _body = call(api, "PUT", "/v2/app/manifests/" + manifest_digest, manifest,
                                  headers={"Content-Type": OCI_MANIFEST})
    assert status == 201 and headers["Docker-Content-Digest"] == manifest_digest
    assert call(api, "GET", "/v2/app/manifests/" + manifest_digest, None)[2] == manifest


def test_a_corrupt_verbatim_blob_is_never_sent_whole(api):
    blob = os.urandom(600 << 10)
    upload(api, "app", blob)
    path = os.path.join(api.repo.remote.root, object_key(sha(blob)))
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"X")
    response = api.handle("GET", "/v2/app/blobs/" + sha(blob), {}, {})
    received = bytearray()
    with pytest.raises(Exception, match="corrupt"):
        for piece in response.body:
            received += piece
    assert len(received) < len(blob)


def test_prune_keeps_tagged_oci_content_with_its_referrers_and_drops_it_once_untagged(api):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
    index, amd64, _arm64 = multi_platform(api)
    sbom = artifact_for(api, "app", index, OCI_INDEX)
    repo = api.repo
    for info in list(repo.remote.list("leases/")):
        repo.remote.delete(info.key)        # the uploads' leases: as if their manifests were an hour old
    later = 10 ** 10
    plan = plan_prune(repo, 3600, now=later)
    assert plan.count == 0, plan.result()["deleted"]
    assert call(api, "DELETE", "/v2/app/manifests/multi", None)[0] == 202
    plan = plan_prune(repo, 3600, now=later)
    deleted = plan.result()["deleted"]
    assert sorted(deleted["oci_manifests"]) == sorted("oci-manifests/sha256/" + sha(body)[7:]    # index, 2 images, SBOM
                                                      for body in (index, amd64, _arm64, sbom))
    assert deleted["referrers"] == ["referrers/sha256/%s/sha256-%s" % (sha(index)[7:], sha(sbom)[7:])]
    assert len(deleted["manifests"]) == 2 and "blobs/sha256/%s/%s" % (sha(amd64)[7:9], sha(amd64)[7:]) not in deleted["blobs"]
    execute_prune(repo, plan)
    assert list(repo.remote.list("oci-manifests/")) == [] and list(repo.remote.list("referrers/")) == []
    assert list(repo.remote.list("blobs/")) == [] and list(repo.remote.list("manifests/")) == []


def test_verify_checks_what_oci_tags_need(api):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify
    _index, amd64, _arm64 = multi_platform(api)
    assert verify(api.repo).problems == []
    layer = json.loads(amd64)["layers"][1]["digest"]
    os.unlink(os.path.join(api.repo.remote.root, object_key(layer)))
    problems = verify(api.repo).problems
    assert [(p.kind, p.key) for p in problems] == [("missing", object_key(layer))]


@pytest.mark.parametrize("case", ["bad subject", "too many layers", "deep json", "referrers digest", "child digest"])
def test_hostile_oci_documents_are_refused_in_one_line(api, case):
    path, body, method = "/v2/app/manifests/x", None, "PUT"
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2}, "layers": []}
    upload(api, "app", b"{}")
    if case == "bad subject":
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": "sha256:../../../etc/passwd", "size": 1}
    elif case == "too many layers":
        doc["layers"] = [{"mediaType": "text/plain", "digest": sha(b"{}"), "size": 2}] * 10001
    elif case == "deep json":
        body = b"[" * 100000 + b"]" * 100000
    elif case == "referrers digest":
        method, path = "GET", "/v2/app/referrers/sha256:..%2f..%2fetc"
    else:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha999:abc", "size": 1}]}
    if body is None and method == "PUT":
        body = json.dumps(doc).encode()
    content_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    status, _h, payload = call(api, method, path, body, headers={"Content-Type": content_type})
    error = json.loads(payload)["errors"][0]
    assert status == 400 and error["code"] in ("MANIFEST_INVALID", "DIGEST_INVALID", "NAME_INVALID"), error
    assert "\n" not in error["message"] and len(error["message"]) < 400
    assert api.repo.read_target(parse_image_ref("app:x")) is None


# ---- integrity of what is stored as pushed (issue 16) ----------------------------------------

def stored_path(api, key):
    return os.path.join(api.repo.remote.root, key)


def flip_byte(api, key, offset=100):
    with open(stored_path(api, key), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def truncate(api, key, keep):
    with open(stored_path(api, key), "r+b") as f:
        f.truncate(keep)


def quarantined(api):
    """Keys moved to quarantine/<time>/<key>, as the keys they had."""
    return sorted(info.key.split("/", 2)[2] for info in api.repo.remote.list("quarantine/"))


def test_verify_hashes_verbatim_blobs_and_repair_quarantines_the_damaged_ones(api):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify
    image = Image((os.urandom(3000), b"top" * 100))
    assert push(api, "app", "1", image)[0] == 201
    flipped, cut = object_key(sha(image.blobs[0])), object_key(sha(image.blobs[1]))
    flip_byte(api, flipped)
    truncate(api, cut, len(image.blobs[1]) - 10)
    report = verify(api.repo)
    assert {(p.kind, p.key, p.repairable) for p in report.problems} == {("corrupt", flipped, True), ("corrupt", cut, True)}
    assert report.blobs == 2 and report.blobs_read == 2, report.result()
    assert {p.key for p in verify(api.repo, sample=0).problems} == {cut}       # a sample of none checks sizes only
    repaired = verify(api.repo, repair=True)
    assert set(repaired.moved) == {flipped, cut} and quarantined(api) == sorted([flipped, cut])
    for blob in image.blobs:        # the next push stores them anew
        upload(api, "app", blob)
    assert verify(api.repo).problems == []


@pytest.mark.parametrize("damage", ["truncated layer", "appended to layer", "flipped byte in config"])
def test_head_and_mount_never_vouch_for_a_damaged_blob(api, damage):
    image = Image((os.urandom(2 << 20), b"top"))        # a layer too big to hash at every HEAD
    assert push(api, "app", "1", image)[0] == 201
    blob = image.config if "config" in damage else image.blobs[0]
    key = object_key(sha(blob))
    if damage == "truncated layer":
        truncate(api, key, len(blob) - 7)
    elif damage == "appended to layer":
        with open(stored_path(api, key), "ab") as f:
            f.write(b"junk")
    else:
        flip_byte(api, key, 5)
    status, _h, _body = call(api, "HEAD", "/v2/app/blobs/" + sha(blob), None)
    assert status == 404, "HEAD vouched for a damaged blob: Docker would skip sending it"
    status, _h, _body = call(api, "POST", "/v2/other/blobs/uploads/", None, query={"mount": sha(blob), "from": "app"})
    assert status == 202        # not mounted: an upload starts instead


@pytest.mark.parametrize("damage", ["truncated layer", "flipped byte in config"])
def test_a_damaged_blob_is_replaced_by_the_good_copy_a_client_uploads_again(api, damage):
    image = Image((os.urandom(2 << 20), b"top"))
    assert push(api, "app", "1", image)[0] == 201
    blob = image.config if "config" in damage else image.blobs[0]
    key = object_key(sha(blob))
    if damage == "truncated layer":
        truncate(api, key, len(blob) // 2)
    else:
        flip_byte(api, key, 5)
    upload(api, "app", blob)
    with open(stored_path(api, key), "rb") as f:
        assert f.read() == blob, "the damaged copy stayed: the create-only store kept it"
    assert quarantined(api) == [key]
    assert call(api, "HEAD", "/v2/app/blobs/" + sha(blob), None)[0] == 200
    assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob


@pytest.mark.parametrize("case", ["size from a HEAD of the truncated blob", "size the client made up"])
def test_a_manifest_whose_descriptor_size_differs_from_the_stored_blob_is_refused(api, case):
    """Docker takes a blob's size from HEAD: a truncated blob once vouched for became a tag naming short data."""
    image = Image((os.urandom(2 << 20), b"top"))
    for blob in image.blobs + [image.config]:
        upload(api, "app", blob)
    doc = json.loads(image.manifest())
    if case == "size from a HEAD of the truncated blob":
        truncate(api, object_key(sha(image.blobs[0])), len(image.blobs[0]) - 100)
        doc["layers"][0]["size"] = len(image.blobs[0]) - 100
    else:
        doc["layers"][1]["size"] += 1
    status, _h, payload = call(api, "PUT", "/v2/app/manifests/1", json.dumps(doc).encode(),
                               headers={"Content-Type": DOCKER_MANIFEST})
    error = json.loads(payload)["errors"][0]
    assert (status, error["code"]) == (400, "MANIFEST_BLOB_UNKNOWN"), payload
    assert ("damaged" if "truncated" in case else "bytes") in error["message"] and "\n" not in error["message"]
    assert api.repo.read_target(parse_image_ref("app:1")) is None


def test_a_large_blob_stored_without_a_record_is_uploaded_once_more_then_vouched_for(api):
    """A blob an earlier release stored (no push record) cannot be told whole from its size: HEAD says 404 once,
    the client sends it, and the record written then answers the next HEAD."""
    blob = os.urandom(2 << 20)      # not a layer: never decoded
    upload(api, "app", blob)
    for info in list(api.repo.remote.list("pushed/")):
        api.repo.remote.delete(info.key)
    fresh = RegistryApi(api.repo, writer=RegistryWriter(Repository(api.repo.remote), api.writer.spool))
    assert call(fresh, "HEAD", "/v2/app/blobs/" + sha(blob), None)[0] == 404
    upload(fresh, "app", blob)
    assert quarantined(fresh) == []         # it was whole: kept, and recorded
    status, headers, _body = call(fresh, "HEAD", "/v2/app/blobs/" + sha(blob), None)
    assert status == 200 and headers["Content-Length"] == str(len(blob))
    fresh.writer.close()


def test_a_damaged_pre_existing_manifest_record_or_twin_is_replaced_before_the_tag_names_it(api):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import manifest_key, oci_manifest_key, referrer_key
    from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import Manifest
    index, amd64, _arm64 = multi_platform(api)
    repo = api.repo
    image = platform_image("amd64", b"amd64 top")
    twin_oid = repo.resolve("app:multi", ("linux", "amd64", None))[1]
    sbom = artifact_for(api, "app", index, OCI_INDEX)
    damaged = [oci_manifest_key(sha(amd64)), referrer_key(sha(index), sha(sbom)), manifest_key(twin_oid),
               oci_manifest_key(sha(sbom))]
    for key in damaged:
        flip_byte(api, key, 3)
    # The same content pushed again (a retag, a retry): what the tag reaches must be whole again.
    assert call(api, "PUT", "/v2/app/manifests/amd64", amd64, headers={"Content-Type": OCI_MANIFEST})[0] == 201
    assert call(api, "PUT", "/v2/app/manifests/sbom", sbom, headers={"Content-Type": OCI_MANIFEST})[0] == 201
    assert sorted(quarantined(api)) == sorted(damaged)
    assert call(api, "GET", "/v2/app/manifests/amd64", None)[2] == amd64
    assert Manifest.from_bytes(repo.remote.get(manifest_key(twin_oid)), "twin").config_oid == sha(image.config)[7:]
    listed = json.loads(call(api, "GET", "/v2/app/referrers/" + sha(index), None)[2])["manifests"]
    assert [entry["digest"] for entry in listed] == [sha(sbom)]


# ---- manifests under the lease/prune protocol -----------------------------------------------

def _unclaimed_blobs_of(api, image):
    """Upload an image's blobs and let their upload leases lapse, as if they were pushed long ago."""
    now = [0.0]
    api.writer.clock = lambda: now[0]
    for blob in image.blobs + [image.config]:
        upload(api, "app", blob)
    now[0] = 2 * 3600.0
    api.writer._expire()
    assert list(api.repo.remote.list("leases/")) == []


def test_a_prune_running_while_a_manifest_is_put_cannot_take_the_blobs_it_names(api):
    """The client skipped sending blobs that HEAD vouched for; a prune that found them unreferenced must not
    delete them between the manifest's checks and its tag."""
    import time
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify
    image = Image()
    _unclaimed_blobs_of(api, image)
    repo = api.repo
    plan = plan_prune(repo, 3600, now=time.time() + 2 * 3600)
    assert len(plan.garbage["blobs"]) == 5, plan.result()     # 2 pushed layers, their 2 decoded copies, the config
    put, pruned = repo.remote.put, []

    def put_then_prune(key, data, overwrite=False):
        if key.startswith("oci-manifests/") and not pruned:        # the prune deletes right after the checks
            pruned.append(execute_prune(repo, plan))
        return put(key, data, overwrite)
    repo.remote.put = put_then_prune
    status, _h, payload = call(api, "PUT", "/v2/app/manifests/1", image.manifest(), headers={"Content-Type": DOCKER_MANIFEST})
    assert status == 201, payload
    assert pruned and pruned[0]["deleted"]["blobs"] == [], pruned[0]["deleted"]
    assert verify(repo).problems == []
    for blob in image.blobs + [image.config]:
        assert call(api, "GET", "/v2/app/blobs/" + sha(blob), None)[2] == blob
    assert list(repo.remote.list("leases/")) == []      # the manifest's lease went with its tag


def test_a_blob_a_prune_took_before_the_manifest_lease_fails_the_put_with_no_tag(api):
    image = Image()
    _unclaimed_blobs_of(api, image)
    repo = api.repo
    put, gone = repo.remote.put, object_key(sha(image.blobs[1]))

    def prune_finished_just_before(key, data, overwrite=False):
        if key.startswith("leases/"):
            repo.remote.delete(gone)
        return put(key, data, overwrite)
    repo.remote.put = prune_finished_just_before
    status, _h, payload = call(api, "PUT", "/v2/app/manifests/1", image.manifest(), headers={"Content-Type": DOCKER_MANIFEST})
    assert status == 503 and b"run the push again" in payload, payload
    assert repo.read_target(parse_image_ref("app:1")) is None
    assert list(repo.remote.list("oci-manifests/")) == [] and list(repo.remote.list("leases/")) == []


def test_prune_after_a_sha512_upload_keeps_the_blob_while_its_lease_lives(api):
    import time
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.leases import LEASE_TTL
    from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
    blob = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(blob).hexdigest()
    assert call(api, "POST", "/v2/app/blobs/uploads/", blob, query={"digest": digest})[0] == 201
    repo = api.repo
    plan = plan_prune(repo, 3600, now=time.time() + 2 * 3600)
    assert object_key(digest) not in plan.result()["deleted"]["blobs"]
    execute_prune(repo, plan)
    assert call(api, "GET", "/v2/app/blobs/" + digest, None)[2] == blob
    expired = plan_prune(repo, 3600, now=time.time() + LEASE_TTL + 2 * 3600)      # no manifest ever claimed it
    assert object_key(digest) in expired.result()["deleted"]["blobs"]


# ---- bombs and the spool ----------------------------------------------------------------------

def gzip_bomb(members):
    """`members` gzip members of 64 MiB of zeros each (64 KiB apiece): a valid multi-member gzip stream."""
    return gzip.compress(b"\0" * (64 << 20), compresslevel=9, mtime=0) * members


def test_a_gzip_bomb_pushed_as_a_layer_is_kept_as_pushed_but_not_decoded_in_full(api):
    bomb = gzip_bomb(32)            # 2 MiB that would decode to 2 GiB
    assert len(bomb) < 3 << 20
    upload(api, "app", bomb)
    assert call(api, "HEAD", "/v2/app/blobs/" + sha(bomb), None)[0] == 200
    stored = [info.key for info in api.repo.remote.list("blobs/")]
    assert stored == [object_key(sha(bomb))], "no decoded copy of the bomb is stored"
    assert PushRecord.from_bytes(api.repo.remote.get(pushed_key(sha(bomb))), "record") == PushRecord(len(bomb))


def test_uploads_share_a_spool_budget(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    writer = RegistryWriter(repo, str(tmp_path), spool_budget=10000)
    api = RegistryApi(repo, writer=writer)
    first = call(api, "POST", "/v2/app/blobs/uploads/")[1]["Location"]
    blob = os.urandom(6000)
    assert call(api, "PATCH", first, blob)[0] == 202
    second = call(api, "POST", "/v2/app/blobs/uploads/")[1]["Location"]
    status, headers, body = call(api, "PATCH", second, os.urandom(5000))
    assert (status, json.loads(body)["errors"][0]["code"]) == (429, "TOOMANYREQUESTS") and "Retry-After" in headers
    assert call(api, "GET", second, None)[0] == 404         # refused and dropped: the client starts again
    big = os.urandom(10001)
    status, _h, body = call(api, "POST", "/v2/app/blobs/uploads/", big, query={"digest": sha(big)})
    assert status == 507 and b"budget" in body, body        # could never fit
    assert call(api, "PUT", first, b"", query={"digest": sha(blob)})[0] == 201
    upload(api, "app", os.urandom(5000))                    # room again once the first upload was stored
    assert os.listdir(writer.spool) == []
    writer.close()


def test_an_abandoned_upload_is_freed_after_ten_idle_minutes_whatever_request_comes_next(api):
    now = [0.0]
    api.writer.clock = lambda: now[0]
    abandoned = call(api, "POST", "/v2/app/blobs/uploads/")[1]["Location"]
    assert call(api, "PATCH", abandoned, os.urandom(1000))[0] == 202
    going_on = call(api, "POST", "/v2/app/blobs/uploads/")[1]["Location"]
    now[0] = 550.0
    assert call(api, "PATCH", going_on, os.urandom(1000))[0] == 202
    now[0] = 601.0
    assert call(api, "PATCH", going_on, os.urandom(1000))[0] == 202
    assert call(api, "GET", abandoned, None)[0] == 404
    assert os.listdir(api.writer.spool) == ["upload-" + going_on.rsplit("/", 1)[1]]


def test_a_multi_member_gzip_layer_is_decoded_whole(api):
    """pigz -i and eStargz write a layer as several gzip members; Go's gzip reader (Docker's) reads them all."""
    image = Image((os.urandom(3000), b"top" * 100))
    tar = image.tars[0]
    image.blobs[0] = gzip.compress(tar[:2048], mtime=0) + gzip.compress(tar[2048:], mtime=0)
    assert push(api, "app", "1", image)[0] == 201
    manifest = api.repo.read_manifest(api.repo.resolve("app:1")[1])
    assert manifest.layers[0].oid == sha(tar)[7:]


def test_a_raw_layer_dogestry_push_stored_is_vouched_for_by_its_manifest_not_a_record(api, tmp_path):
    from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
    big = layer_tar("big", os.urandom(2 << 20))
    _oid, manifest = store_image(api.repo, "thin:1", [big])
    fresh = RegistryApi(api.repo, writer=RegistryWriter(Repository(api.repo.remote), str(tmp_path)))
    status, headers, _body = call(fresh, "HEAD", "/v2/thin/blobs/" + sha(big), None)
    assert status == 200 and headers["Content-Length"] == str(len(big))
    truncate(api, manifest.layers[0].key, len(big) - 1)
    assert call(fresh, "HEAD", "/v2/thin/blobs/" + sha(big), None)[0] == 404
    fresh.writer.close()
