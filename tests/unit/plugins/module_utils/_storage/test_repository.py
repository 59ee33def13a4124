import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    BlobCorruptError, FormatError, ImageReferenceError, RemoteNotFoundError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import canonical_json, sha256_hex
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.manifest import LayerEntry, Manifest
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository


def store_image(repo, config_oid, tags=()):
    manifest = Manifest(config_oid, 2, (LayerEntry("a" * 64, 10, "none", 10),))
    oid = repo.write_manifest(manifest)
    for ref in tags:
        repo.write_tag(ref, oid)
    return oid


@pytest.fixture
def repo(tmp_path):
    repository = Repository(LocalRemote(str(tmp_path)))
    repository.check(create=True)
    return repository


def test_empty_directory_is_not_a_remote_until_a_push_creates_it(tmp_path):
    with pytest.raises(RemoteNotFoundError, match="not a dogestry remote yet"):
        Repository(LocalRemote(str(tmp_path / "r"))).check()
    assert Repository(LocalRemote(str(tmp_path / "r"))).check(create=True)
    (tmp_path / "r" / "dogestry.json").write_bytes(canonical_json({"format": "dogestry", "version": 9}))
    with pytest.raises(FormatError, match="upgrade"):
        Repository(LocalRemote(str(tmp_path / "r"))).check()


def test_resolve_tags_and_id_prefixes(repo):
    one = store_image(repo, "12ab0" + "0" * 59, [ImageRef("app", "1")])
    two = store_image(repo, "12ab1" + "0" * 59, [ImageRef("app", "2")])
    assert repo.resolve("app:1") == (ImageRef("app", "1"), one)
    assert repo.resolve("12ab1") == (None, two)
    assert repo.resolve("sha256:12ab00") == (None, one)
    with pytest.raises(ImageReferenceError, match="ambiguous.*12ab00000000, 12ab10000000"):
        repo.resolve("12ab")
    with pytest.raises(ImageReferenceError, match="no such tag"):
        repo.resolve("app:3")
    with pytest.raises(ImageReferenceError, match="no image with ID"):
        repo.resolve("sha256:ffff")


def test_list_tags_filters_by_patterns(repo):
    oid = store_image(repo, "c" * 64, [ImageRef("app", "1"), ImageRef("app", "latest"), ImageRef("app/sub", "1"),
                                       ImageRef("other", "1")])
    assert repo.list_tags("app") == {ImageRef("app", "1"): oid, ImageRef("app", "latest"): oid}
    assert set(repo.list_tags("app*", "1")) == {ImageRef("app", "1"), ImageRef("app/sub", "1")}
    assert len(repo.list_tags()) == 4


def test_corrupt_manifest_and_config_are_detected(repo, tmp_path):
    oid = store_image(repo, "d" * 64, [ImageRef("app", "1")])
    path = tmp_path / "manifests" / "sha256" / oid
    path.write_bytes(path.read_bytes().replace(b'"size":10', b'"size":11'))
    with pytest.raises(BlobCorruptError, match="manifest"):
        repo.read_manifest(oid)
    config = b'{"rootfs": {"type": "layers", "diff_ids": []}}'
    manifest = Manifest(sha256_hex(config), len(config), (LayerEntry("a" * 64, 1, "none", 1),))
    repo.remote.put(manifest.config_key, config)
    with pytest.raises(BlobCorruptError, match="does not declare"):
        repo.read_config(manifest)
