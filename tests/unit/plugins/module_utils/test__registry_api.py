"""The registry API's pure request -> Response logic, over a directory remote (no sockets, no Docker)."""

import hashlib
import os
import json

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._compress import encoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format import (
    LayerEntry, Manifest, OCI_MANIFEST_MEDIA_TYPE, blob_key, canonical_json, parse_image_ref, sha256_hex,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry_api import (
    ApiError, RegistryApi, _held_back, accepts_oci, candidate_names, parse_range,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._repository import Repository

LAYER = bytes(range(256)) * 4096 + b"tail"        # 1 MiB + 4: crosses the 1 MiB decode chunk


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-9", 10, (0, 9)),
    ("bytes=2-", 10, (2, 9)),
    ("bytes=5-100", 10, (5, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
])
def test_parse_range_satisfiable(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header,size", [
    ("bytes=9-2", 10), ("bytes=10-", 10), ("bytes=99999999999999999999-", 10), ("bytes=-0", 10),
    ("bytes=-", 10), ("items=0-1", 10), ("bytes=0-1,3-4", 10), ("bytes=0-", 0),
])
def test_parse_range_unsatisfiable_is_416(header, size):
    with pytest.raises(ApiError) as info:
        parse_range(header, size)
    assert info.value.status == 416


@pytest.mark.parametrize("name,ns,expected", [
    ("myapp", None, ["myapp"]),
    ("library/redis", None, ["library/redis", "redis"]),
    ("library/redis", "docker.io", ["library/redis", "redis"]),
    ("team/app", "registry.example.com:5000", ["registry.example.com:5000/team/app", "team/app"]),
    ("library/x", "quay.io", ["quay.io/library/x", "library/x"]),
])
def test_candidate_names(name, ns, expected):
    assert candidate_names(name, ns) == expected


@pytest.mark.parametrize("accept,ok", [
    ([], True),
    (["application/vnd.oci.image.manifest.v1+json"], True),
    (["application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"], True),
    (["*/*"], True),
    (["application/vnd.docker.distribution.manifest.v2+json"], False),
])
def test_accepts_oci(accept, ok):
    assert accepts_oci(accept) is ok


def test_held_back_never_yields_the_last_chunk_of_a_failing_stream():
    def failing():
        yield b"a"
        yield b"b"
        raise BlobCorruptError("bad")
    got = []
    with pytest.raises(BlobCorruptError):
        for chunk in _held_back(failing()):
            got.append(chunk)
    assert got == [b"a"]
    assert list(_held_back(iter([b"a", b"b"]))) == [b"a", b"b"]


def _store(repo, ref, layer, encoding):
    repo.check(create=True)
    oid = sha256_hex(layer)
    enc = encoder(encoding)
    stored = enc.update(layer) + enc.finish()
    repo.remote.put(blob_key(oid, encoding), stored)
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + oid]}, "comment": ref})
    repo.remote.put(blob_key(sha256_hex(config)), config)
    manifest = Manifest(sha256_hex(config), len(config), (LayerEntry(oid, len(layer), encoding, len(stored)),))
    repo.write_tag(parse_image_ref(ref), repo.write_manifest(manifest))
    return manifest, config


@pytest.fixture
def api(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    manifest, config = _store(repo, "team/app:1", LAYER, "lz4")
    _store(repo, "redis:7", b"redis layer", "none")
    return RegistryApi(repo), manifest, config


def get(api, path, method="GET", query=None, **headers):
    response = api.handle(method, path, query or {}, {k.lower(): [v] for k, v in headers.items()})
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    return response, dict(response.headers), body


def error_code(body):
    return json.loads(body)["errors"][0]["code"]


def test_manifest_by_tag_then_by_digest(api):
    api, manifest, _config = api
    response, headers, body = get(api, "/v2/team/app/manifests/1", Accept=OCI_MANIFEST_MEDIA_TYPE)
    assert response.status == 200 and body == manifest.oci_bytes()
    assert headers["Content-Type"] == OCI_MANIFEST_MEDIA_TYPE
    digest = headers["Docker-Content-Digest"]
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    fresh = RegistryApi(api.repo)   # after a restart: found through the tags
    response, headers, body2 = get(fresh, "/v2/team/app/manifests/" + digest)
    assert response.status == 200 and body2 == body
    response, headers, body3 = get(fresh, "/v2/team/app/manifests/" + digest, method="HEAD")
    assert response.status == 200 and body3 == b"" and headers["Content-Length"] == str(len(body))


def test_layer_is_served_decoded_and_ranged(api):
    api, manifest, config = api
    layer = manifest.layers[0]
    response, headers, body = get(api, "/v2/team/app/blobs/sha256:" + layer.oid)
    assert response.status == 200 and body == LAYER and headers["Content-Length"] == str(len(LAYER))
    response, headers, body = get(api, "/v2/team/app/blobs/sha256:" + layer.oid, Range="bytes=1048570-1048579")
    assert response.status == 206 and body == LAYER[1048570:1048580]
    assert headers["Content-Range"] == "bytes 1048570-1048579/%d" % len(LAYER)
    response, headers, body = get(api, "/v2/team/app/blobs/sha256:" + manifest.config_oid)
    assert body == config
    response, _h, body = get(api, "/v2/team/app/blobs/sha256:" + layer.oid, Range="bytes=9-2")
    assert response.status == 416


def test_library_names_and_ns_find_familiar_names(api):
    api, _m, _c = api
    assert get(api, "/v2/library/redis/manifests/7", query={"ns": "docker.io"})[0].status == 200
    assert get(api, "/v2/library/redis/tags/list")[2] == b'{"name": "redis", "tags": ["7"]}'
    assert get(api, "/v2/app/manifests/1", query={"ns": "team"})[0].status == 200    # ns/name = team/app
    assert error_code(get(api, "/v2/app/manifests/1", query={"ns": "../x"})[2]) == "NAME_INVALID"


@pytest.mark.parametrize("path,status,code", [
    ("/v2/nope/manifests/1", 404, "NAME_UNKNOWN"),
    ("/v2/team/app/manifests/2", 404, "MANIFEST_UNKNOWN"),
    ("/v2/team/app/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
    ("/v2/team/app/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
    ("/v2/team/app/blobs/sha256:../../etc/passwd", 404, "NOT_FOUND"),
    ("/v2/team/app/blobs/sha256:..", 400, "DIGEST_INVALID"),
    ("/v2/team/app/blobs/sha512:" + "0" * 128, 404, "BLOB_UNKNOWN"),
    ("/v2/team/app/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
    ("/v2/team/app/blobs/sha256:ABC", 400, "DIGEST_INVALID"),
    ("/v2/../../etc/manifests/1", 400, "NAME_INVALID"),
    ("/v2/team/../app/manifests/1", 400, "NAME_INVALID"),
    ("/v2/Team/manifests/1", 400, "NAME_INVALID"),
    ("/v2/team/app/manifests/..", 400, "MANIFEST_INVALID"),
    ("/etc/passwd", 404, "NOT_FOUND"),
])
def test_bad_requests_get_spec_errors(api, path, status, code):
    response, headers, body = get(api[0], path)
    assert (response.status, error_code(body)) == (status, code)
    assert headers["Content-Type"] == "application/json"


def test_writes_are_refused(api):
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        response, _h, body = get(api[0], "/v2/team/app/manifests/1", method=method)
        assert (response.status, error_code(body)) == (405, "UNSUPPORTED")


def test_tags_and_catalog_paginate(api):
    api, manifest, _c = api
    api.repo.write_tag(parse_image_ref("team/app:2"), sha256_hex(manifest.to_bytes()))
    response, headers, body = get(api, "/v2/team/app/tags/list", query={"n": "1"})
    assert json.loads(body) == {"name": "team/app", "tags": ["1"]}
    assert headers["Link"] == '</v2/team/app/tags/list?n=1&last=1>; rel="next"'
    _r, _h, body = get(api, "/v2/team/app/tags/list", query={"n": "1", "last": "1"})
    assert json.loads(body)["tags"] == ["2"]
    _r, _h, body = get(api, "/v2/_catalog")
    assert json.loads(body) == {"repositories": ["redis", "team/app"]}
    assert get(api, "/v2/_catalog", query={"n": "x"})[0].status == 400


def flip_byte_near_end(path):
    data = bytearray(open(path, "rb").read())
    data[-40] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_corrupt_layer_never_yields_its_last_chunk(api):
    api, manifest, _c = api
    layer = manifest.layers[0]
    flip_byte_near_end(api.repo.remote._path(blob_key(layer.oid, "lz4")))
    response = api.handle("GET", "/v2/team/app/blobs/sha256:" + layer.oid, {}, {})
    assert response.status == 200     # headers go out before the bytes are known to be bad
    sent = 0
    with pytest.raises(BlobCorruptError):
        for chunk in response.body:
            sent += len(chunk)
    assert sent < len(LAYER)


def test_unreachable_remote_is_503_then_recovers(api, tmp_path):
    api, _m, _c = api
    root = api.repo.remote.root
    (tmp_path / "moved").mkdir()
    os.rename(root, str(tmp_path / "moved" / "r"))
    assert get(api, "/healthz")[0].status in (404, 503)
    os.rename(str(tmp_path / "moved" / "r"), root)
    assert get(api, "/healthz")[0].status == 200


def test_cache_serves_verified_layers_and_drops_a_corrupted_entry(api, tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._blob_cache import BlobCache
    api, manifest, _c = api
    layer = manifest.layers[0]
    from ansible_collections.dogestry.dogestry.plugins.module_utils._metrics import Metrics
    metrics = Metrics()
    cached = RegistryApi(api.repo, BlobCache(str(tmp_path / "cache"), 10 << 20, metrics.cache_hit,
                                             metrics.cache_miss), metrics)
    path = "/v2/team/app/blobs/sha256:" + layer.oid
    assert get(cached, path)[2] == LAYER and blob_key(layer.oid, "lz4") in cached.cache
    entry = tmp_path / "cache" / (layer.oid + ".lz4")
    flip_byte_near_end(str(entry))
    with pytest.raises(BlobCorruptError):
        get(cached, path)
    assert blob_key(layer.oid, "lz4") not in cached.cache and not entry.exists()
    assert get(cached, path)[2] == LAYER      # refetched from the remote
    metrics = get(cached, "/metrics")[2].decode()
    assert "dogestry_cache_hits_total 1.0" in metrics and "dogestry_cache_misses_total 2.0" in metrics
    assert "dogestry_remote_errors_total 1.0" in metrics


def test_corrupt_remote_layer_is_not_cached(api, tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._blob_cache import BlobCache
    api, manifest, _c = api
    layer = manifest.layers[0]
    flip_byte_near_end(api.repo.remote._path(blob_key(layer.oid, "lz4")))
    cached = RegistryApi(api.repo, BlobCache(str(tmp_path / "cache"), 10 << 20))
    with pytest.raises(BlobCorruptError):
        get(cached, "/v2/team/app/blobs/sha256:" + layer.oid)
    assert os.listdir(str(tmp_path / "cache")) == []
