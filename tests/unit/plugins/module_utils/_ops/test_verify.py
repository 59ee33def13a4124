"""verify(): every kind of damage found, repair moves exactly the damaged objects aside, on a directory and on S3."""

import random

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import image_index_key, manifest_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.tags import ref_document
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.verify import verify
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image


@pytest.fixture(params=["directory", "s3"])
def repo(request, tmp_path):
    if request.param == "directory":
        return Repository(LocalRemote(str(tmp_path / "remote")))
    s3_env, bucket = request.getfixturevalue("s3_env"), request.getfixturevalue("s3_bucket")
    return Repository(remote_from_url("s3://%s/v/" % bucket, endpoint_url=s3_env))


def damage(repo):
    """Two images; then a layer of equal size, a truncated layer, a tampered index entry, a lost manifest."""
    a_oid, a = store_image(repo, "a:1", [b"shared layer", b"only a" * 100])
    b_oid, b = store_image(repo, "b:1", [b"shared layer", b"only b" * 100, b"b top"])
    repo.remote.put(a.layers[1].key, b"ONLY A" * 100, overwrite=True)             # same size, other bytes
    repo.remote.put(b.layers[2].key, b"b t", overwrite=True)                      # wrong size
    repo.remote.put(image_index_key(a.config_oid), ref_document(b_oid), overwrite=True)
    return a, b, b_oid


def test_every_kind_of_damage_is_found_and_nothing_moves_without_repair(repo):
    a, b, _b_oid = damage(repo)
    report = verify(repo)
    found = {(p.kind, p.key) for p in report.problems}
    assert found == {("corrupt", a.layers[1].key), ("corrupt", b.layers[2].key),
                     ("wrong", image_index_key(a.config_oid))}
    assert report.manifests == 2 and report.layers == 4 and report.layers_read == 4 and not report.moved
    assert repo.remote.stat([a.layers[1].key])        # still there


def test_a_sample_reads_only_that_many_layers_in_full(repo):
    a, b, _b_oid = damage(repo)
    report = verify(repo, sample=0)
    assert report.layers_read == 0 and report.bytes_read == 0
    assert {p.key for p in report.problems if p.kind == "corrupt"} == {b.layers[2].key}    # size alone
    assert verify(repo, sample=4, rng=random.Random(1)).layers_read == 4


def test_repair_moves_the_damaged_objects_and_a_second_check_finds_only_what_is_missing(repo):
    a, b, b_oid = damage(repo)
    repo.remote.delete(manifest_key(b_oid))       # b:1 now names a missing manifest
    report = verify(repo, repair=True)
    # b's index entry now names a missing manifest; b's layers are no manifest's any more (prune's business)
    assert set(report.moved) == {a.layers[1].key, image_index_key(a.config_oid), image_index_key(b.config_oid)}
    assert all(target.startswith("quarantine/") and target.endswith(key) for key, target in report.moved.items())
    assert [p.kind for p in report.unrepaired] == ["broken"]
    again = verify(repo)
    assert {p.kind for p in again.problems} == {"missing", "broken"}
    assert {p.key for p in again.problems if p.kind == "missing"} == {a.layers[1].key}
