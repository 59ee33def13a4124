import json

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import FormatError, ImageReferenceError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import check_version_document, version_document
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest, chain_ids
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.oci import OCI_LAYER_MEDIA_TYPE
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef, looks_like_id_prefix, parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.tags import tag_from_key, tag_key

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize("text, expected", [
    ("myapp", ImageRef("myapp", "latest")),
    ("myapp:20131210", ImageRef("myapp", "20131210")),
    ("team/app:1.2", ImageRef("team/app", "1.2")),
    ("registry.example.com:5000/team/app", ImageRef("registry.example.com:5000/team/app", "latest")),
    ("registry.example.com:5000/team/app:v1_2-3", ImageRef("registry.example.com:5000/team/app", "v1_2-3")),
    ("docker.io/library/redis:7", ImageRef("redis", "7")),
    ("docker.io/bitnami/redis:7", ImageRef("bitnami/redis", "7")),
    ("localhost:5000/a", ImageRef("localhost:5000/a", "latest")),
])
def test_parse_image_ref(text, expected):
    assert parse_image_ref(text) == expected


@pytest.mark.parametrize("text", ["UPPER:1", "a//b:1", "-a:1", "a:-tag", "a:" + "t" * 129, "a@sha256:" + A, "", "a/../b"])
def test_parse_image_ref_rejects(text):
    with pytest.raises(ImageReferenceError):
        parse_image_ref(text)


def test_tag_keys_of_nested_names_never_collide_and_round_trip():
    refs = [ImageRef("a", "b"), ImageRef("a/b", "latest"), ImageRef("a/b/c", "b"),
            ImageRef("registry.example.com:5000/a", "1")]
    keys = [tag_key(ref.name, ref.tag) for ref in refs]
    assert len(set(keys)) == len(keys)
    for key in keys:      # no key is a directory prefix of another
        assert not any(other.startswith(key + "/") for other in keys)
    assert [tag_from_key(key) for key in keys] == refs


@pytest.mark.parametrize("key", ["repositories/a/latest", "repositories/_tags/x", "manifests/sha256/" + A,
                                 "repositories/A/_tags/x"])
def test_tag_from_key_ignores_other_keys(key):
    assert tag_from_key(key) is None


def test_manifest_round_trip_is_canonical():
    manifest = Manifest(C, 1875, (LayerEntry(A, 2048, "lz4", 100), LayerEntry(B, 10, "none", 10)))
    data = manifest.to_bytes()
    assert Manifest.from_bytes(data, "m") == manifest
    assert Manifest.from_bytes(data, "m").to_bytes() == data
    assert manifest.layers[0].key == "blobs/sha256/aa/%s.lz4" % A
    assert manifest.layers[1].key == "blobs/sha256/bb/%s" % B


@pytest.mark.parametrize("mutate", [
    lambda d: d.replace(b'"lz4"', b'"zip"'),
    lambda d: d.replace(b'"size":2048', b'"size":-1'),
    lambda d: d.replace(b"sha256:" + A.encode(), b"sha256:xyz"),
    lambda d: d.replace(b"application/vnd.dogestry.manifest.v1+json", b"application/json"),
    lambda d: d[:-5],
])
def test_malformed_manifests_are_format_errors(mutate):
    data = Manifest(C, 1, (LayerEntry(A, 2048, "lz4", 100),)).to_bytes()
    with pytest.raises(FormatError):
        Manifest.from_bytes(mutate(data), "m")


def test_version_document_checks():
    check_version_document(version_document(), "r")
    check_version_document(version_document(2), "r")     # version 2 adds OCI content; both are read
    with pytest.raises(FormatError, match="version 3"):
        check_version_document(b'{"format": "dogestry", "version": 3}', "r")
    with pytest.raises(FormatError, match="not a dogestry remote"):
        check_version_document(b"<html>", "r")


def test_chain_ids_follow_docker():
    # ChainID(L0) = L0, ChainID(L0|L1) = sha256("sha256:L0 sha256:L1") (moby layer/layer.go CreateChainID).
    import hashlib
    assert chain_ids([A]) == [A]
    assert chain_ids([A, B]) == [A, hashlib.sha256(("sha256:%s sha256:%s" % (A, B)).encode()).hexdigest()]
    assert len(set(chain_ids([A, B, C]))) == 3


@pytest.mark.parametrize("text, expected", [
    ("1dc66c9bbfee", True), ("sha256:1dc6", True), ("1dc", False), ("myapp", False), ("cafe", True), ("A" * 12, False),
])
def test_looks_like_id_prefix(text, expected):
    assert looks_like_id_prefix(text) is expected


def test_oci_bytes_depend_only_on_the_image():
    a = Manifest("c" * 64, 10, (LayerEntry("a" * 64, 100, "lz4", 40),))
    b = Manifest("c" * 64, 10, (LayerEntry("a" * 64, 100, "none", 100),))
    assert a.oci_bytes() == b.oci_bytes()          # the stored encoding is not part of it
    doc = json.loads(a.oci_bytes())
    assert doc["layers"] == [{"mediaType": OCI_LAYER_MEDIA_TYPE, "digest": "sha256:" + "a" * 64, "size": 100}]
    assert doc["config"]["digest"] == "sha256:" + "c" * 64 and doc["schemaVersion"] == 2


@pytest.mark.parametrize("data", [b"[" * 100000 + b"]" * 100000, b'{"a":' * 100000, b"\xff\xfe not utf-8"])
def test_hostile_json_is_a_one_line_format_error(data):
    """Deep nesting used to escape as a RecursionError from the parser."""
    with pytest.raises(FormatError, match="dogestry.json is not valid"):
        check_version_document(data, "remote")
    with pytest.raises(FormatError, match=r"^manifest m is malformed \("):
        Manifest.from_bytes(data, "m")


@pytest.mark.parametrize("name, full", [
    ("redis", "docker.io/library/redis"),
    ("team/app", "docker.io/team/app"),
    ("registry.example.com:5000/team/app", "registry.example.com:5000/team/app"),
    ("localhost/app", "localhost/app"),
])
def test_full_name_is_the_inverse_of_familiar_name(name, full):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import familiar_name, full_name
    assert full_name(name) == full and familiar_name(full) == name
