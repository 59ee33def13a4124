"""The registry API's pure request -> Response logic, over a directory remote (no sockets, no Docker)."""

import hashlib
import io
import json
import os
import random
import time

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import encoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import blob_key, canonical_json, object_key, sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.oci import OCI_MANIFEST_MEDIA_TYPE
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.blobs import _held_back, parse_range
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.routes import accepts_oci, candidate_names
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.routes import ApiError
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository

LAYER = bytes(range(256)) * 4096 + b"tail"        # 1 MiB + 4: crosses the 1 MiB decode chunk


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-9", 10, (0, 9)),
    ("bytes=2-", 10, (2, 9)),
    ("bytes=5-100", 10, (5, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=0-" + "9" * 5000, 10, (0, 9)),             # past Python's int() digit limit: still the whole blob
    ("bytes=-" + "9" * 5000, 10, (0, 9)),
])
def test_parse_range_satisfiable(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header,size", [
    ("bytes=9-2", 10), ("bytes=10-", 10), ("bytes=99999999999999999999-", 10), ("bytes=-0", 10),
    ("bytes=-", 10), ("items=0-1", 10), ("bytes=0-1,3-4", 10), ("bytes=0-", 0),
    ("bytes=" + "9" * 5000 + "-", 10), ("bytes=" + "1" * 5000 + "-" + "2" * 5000, 10),
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
    ("/v2/%s/manifests/1" % ("a" * 300), 400, "NAME_INVALID"),           # a component over NAME_MAX
    ("/v2/%s/tags/list" % "/".join(["abcdefghij"] * 24), 400, "NAME_INVALID"),  # 263 characters
    ("/v2/%s/blobs/sha256:%s" % ("b" * 256, "0" * 64), 400, "NAME_INVALID"),
])
def test_bad_requests_get_spec_errors(api, path, status, code):
    response, headers, body = get(api[0], path)
    assert (response.status, error_code(body)) == (status, code)
    assert headers["Content-Type"] == "application/json"
    assert api[0].repo.remote.root not in body.decode()        # no server path in an answer to a bad request


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
    assert get(api, "/healthz")[0].status == 503        # the remote's directory is gone: unavailable, not "not found"
    os.rename(str(tmp_path / "moved" / "r"), root)
    assert get(api, "/healthz")[0].status == 200


def test_cache_serves_verified_layers_and_drops_a_corrupted_entry(api, tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
    api, manifest, _c = api
    layer = manifest.layers[0]
    from ansible_collections.dogestry.dogestry.plugins.module_utils._metrics import Metrics
    metrics = Metrics()
    cached = RegistryApi(api.repo, BlobCache(str(tmp_path / "cache"), 10 << 20, metrics.cache_hit,
                                             metrics.cache_miss), metrics)
    path = "/v2/team/app/blobs/sha256:" + layer.oid
    assert get(cached, path)[2] == LAYER
    wait_until(lambda: blob_key(layer.oid, "lz4") in cached.cache, "-")     # kept once the fetch verified it
    entry = tmp_path / "cache" / (layer.oid + ".lz4")
    flip_byte_near_end(str(entry))
    with pytest.raises(BlobCorruptError):
        get(cached, path)
    assert blob_key(layer.oid, "lz4") not in cached.cache and not entry.exists()
    assert get(cached, path)[2] == LAYER      # refetched from the remote
    metrics = get(cached, "/metrics")[2].decode()
    assert "dogestry_cache_hits_total 1.0" in metrics and "dogestry_cache_misses_total 2.0" in metrics
    assert "dogestry_remote_errors_total{kind=\"corrupt\"} 1.0" in metrics


def test_corrupt_remote_layer_is_not_cached(api, tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
    api, manifest, _c = api
    layer = manifest.layers[0]
    flip_byte_near_end(api.repo.remote._path(blob_key(layer.oid, "lz4")))
    cached = RegistryApi(api.repo, BlobCache(str(tmp_path / "cache"), 10 << 20))
    with pytest.raises(BlobCorruptError):
        get(cached, "/v2/team/app/blobs/sha256:" + layer.oid)
    wait_until(lambda: os.listdir(str(tmp_path / "cache")) == [], "-")      # the fetch ended, and kept nothing


@pytest.mark.parametrize("length,status", [("-5", 400), ("5x", 400), ("9" * 5000, 400), ("0x10", 400),
                                           (str((64 << 30) + 1), 413)])
def test_a_bad_content_length_is_refused_before_the_body_is_read(tmp_path, length, status):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.writer import RegistryWriter
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    repo.check(create=True)
    writer = RegistryWriter(repo, str(tmp_path))
    api = RegistryApi(repo, writer=writer)
    body = io.BytesIO(b"hello")
    try:
        response = api.handle("POST", "/v2/team/app/blobs/uploads/", {"digest": "sha256:" + sha256_hex(b"hello")},
                              {"content-length": [length]}, body=body)
    finally:
        writer.close()
    assert response.status == status
    assert error_code(response.body) == "SIZE_INVALID"
    assert body.tell() == 0


class CountingRemote(LocalRemote):
    """A directory remote that counts the stored bytes read through it."""

    def __init__(self, root):
        LocalRemote.__init__(self, root)
        self.bytes_read = 0

    def open(self, key, size=None):
        return _Counted(LocalRemote.open(self, key, size), self)


class _Counted:
    def __init__(self, handle, counter):
        self._handle, self._counter = handle, counter

    def read(self, size=-1):
        data = self._handle.read(size)
        self._counter.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def test_a_range_of_a_blob_stored_as_pushed_reads_only_that_range(tmp_path):
    seed = 13
    data = random.Random(seed).randbytes(6 << 20)
    remote = CountingRemote(str(tmp_path / "remote"))
    repo = Repository(remote)
    repo.check(create=True)
    digest = "sha256:" + sha256_hex(data)
    remote.put(object_key(digest), data)
    api = RegistryApi(repo)
    get(api, "/v2/team/app/blobs/" + digest, method="HEAD")
    for header, expected in (("bytes=0-0", data[:1]), ("bytes=5000000-5000009", data[5000000:5000010]),
                             ("bytes=-3", data[-3:])):
        remote.bytes_read = 0
        response, headers, body = get(api, "/v2/team/app/blobs/" + digest, Range=header)
        assert (response.status, body) == (206, expected), (seed, header)
        assert remote.bytes_read == len(expected), (seed, header, remote.bytes_read)
    assert get(api, "/v2/team/app/blobs/" + digest)[2] == data       # whole: read and verified


def test_a_range_of_a_layer_decodes_only_up_to_its_end(tmp_path):
    seed = 14
    layer = random.Random(seed).randbytes(12 << 20)       # three 4 MiB lz4 blocks that do not shrink
    remote = CountingRemote(str(tmp_path / "remote"))
    repo = Repository(remote)
    manifest, _config = _store(repo, "big:1", layer, "lz4")
    stored = manifest.layers[0].stored_size
    api = RegistryApi(repo)
    path = "/v2/big/blobs/sha256:" + manifest.layers[0].oid
    assert get(api, "/v2/big/manifests/1")[0].status == 200      # the image is known: what follows reads blobs only
    remote.bytes_read = 0
    response, _h, body = get(api, path, Range="bytes=0-0")
    assert (response.status, body) == (206, layer[:1]) and remote.bytes_read < stored // 2, (seed, remote.bytes_read)
    response, _h, body = get(api, path, Range="bytes=4194300-4194309")
    assert (response.status, body) == (206, layer[4194300:4194310]), seed


def test_a_range_of_a_layer_comes_from_a_verified_cache_entry(tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
    seed = 15
    layer = random.Random(seed).randbytes(12 << 20)
    remote = CountingRemote(str(tmp_path / "remote"))
    repo = Repository(remote)
    manifest, _config = _store(repo, "big:1", layer, "lz4")
    stored = manifest.layers[0].stored_size
    cache = BlobCache(str(tmp_path / "cache"), 100 << 20)
    api = RegistryApi(repo, cache)
    path = "/v2/big/blobs/sha256:" + manifest.layers[0].oid
    assert get(api, "/v2/big/manifests/1")[0].status == 200      # the image is known: what follows reads blobs only
    remote.bytes_read = 0
    response, _h, body = get(api, path, Range="bytes=0-0")
    assert (response.status, body) == (206, layer[:1]), seed
    wait_until(lambda: blob_key(manifest.layers[0].oid, "lz4") in cache, seed)
    assert remote.bytes_read == stored, (seed, remote.bytes_read, stored)     # fetched whole, once, and verified
    for start in (0, 5 << 20, len(layer) - 10):
        response, _h, body = get(api, path, Range="bytes=%d-%d" % (start, start + 9))
        assert (response.status, body) == (206, layer[start:start + 10]), (seed, start)
    assert remote.bytes_read == stored, seed          # every later range from the cache entry


def test_a_range_of_a_corrupt_layer_is_never_sent_whole(tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    manifest, _config = _store(repo, "big:1", LAYER, "lz4")
    flip_byte_near_end(repo.remote._path(blob_key(manifest.layers[0].oid, "lz4")))
    api = RegistryApi(repo, BlobCache(str(tmp_path / "cache"), 100 << 20))
    response = api.handle("GET", "/v2/big/blobs/sha256:" + manifest.layers[0].oid, {}, {"range": ["bytes=0-99"]})
    sent = []
    with pytest.raises(BlobCorruptError):
        for chunk in response.body:
            sent.append(chunk)
    assert len(b"".join(sent)) < 100
    wait_until(lambda: os.listdir(str(tmp_path / "cache")) == [], "-")      # the fetch ended, and kept nothing


def wait_until(condition, seed, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within %d s (seed %s)" % (seconds, seed)
        time.sleep(0.05)
