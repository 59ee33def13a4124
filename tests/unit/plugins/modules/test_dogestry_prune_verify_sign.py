"""dogestry_prune, dogestry_verify and dogestry_sign over a directory remote: their check mode, messages and
failures (the engine is cheap and pure there)."""

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.modules import dogestry_prune, dogestry_sign, dogestry_verify
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.module_runner import module_runner


@pytest.fixture
def run_module(monkeypatch):
    return module_runner(monkeypatch)


@pytest.fixture
def repo(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    store_image(repo, "app:1", [b"layer one", b"layer two"])
    return repo


def test_prune_of_a_store_with_nothing_unreferenced(run_module, repo):
    exited = run_module(dogestry_prune.main, dict(remote=repo.url), check_mode=True)
    assert (exited.failed, exited.result["changed"]) == (False, False)
    assert exited.result["msg"] == "nothing to prune on %s (0 unreferenced object(s) younger than 7d kept)" % repo.url


def test_prune_refuses_a_malformed_grace_period_naming_the_option(run_module, repo):
    exited = run_module(dogestry_prune.main, dict(remote=repo.url, grace_period="soon"))
    assert exited.failed and exited.result["msg"].startswith("grace_period: ") and "\n" not in exited.result["msg"]


def test_verify_of_a_sound_store_passes_and_a_damaged_one_fails_with_its_report(run_module, repo):
    exited = run_module(dogestry_verify.main, dict(remote=repo.url))
    assert (exited.failed, exited.result["changed"], exited.result["moved"]) == (False, False, {})
    blob = next(info.key for info in repo.remote.list("blobs/"))
    with open(os.path.join(repo.remote.root, blob), "ab") as f:
        f.write(b"tampered")
    exited = run_module(dogestry_verify.main, dict(remote=repo.url))
    assert exited.failed and blob in str(exited.result["problems"])


def test_verify_repair_in_check_mode_moves_nothing_and_says_where_it_would(run_module, repo):
    blob = next(info.key for info in repo.remote.list("blobs/"))
    with open(os.path.join(repo.remote.root, blob), "ab") as f:
        f.write(b"tampered")
    exited = run_module(dogestry_verify.main, dict(remote=repo.url, repair=True), check_mode=True)
    assert exited.result["changed"] is True and exited.result["moved"] == {blob: "quarantine/…/%s" % blob}
    assert os.path.exists(os.path.join(repo.remote.root, blob))


def test_verify_refuses_a_negative_sample(run_module, repo):
    exited = run_module(dogestry_verify.main, dict(remote=repo.url, sample=-1))
    assert exited.failed and exited.result["msg"] == "sample must be 0 or more, got -1"


def test_sign_in_check_mode_then_for_real_then_again(run_module, repo):
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(     # P-256, as cosign makes
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    args = dict(remote=repo.url, image="app:1", private_key=pem)
    exited = run_module(dogestry_sign.main, args, check_mode=True)
    assert exited.result["changed"] is True and exited.result["msg"].startswith("would sign: app:1 (sha256:")
    assert list(repo.remote.list("referrers/")) == []
    exited = run_module(dogestry_sign.main, args)
    assert exited.result["changed"] is True and exited.result["msg"].startswith("signed: app:1 (sha256:")
    assert len(list(repo.remote.list("referrers/"))) == 1          # the signature, stored as a referrer
    exited = run_module(dogestry_sign.main, args)
    assert (exited.result["changed"], exited.result["msg"]) == (False, "app:1 is already signed by key %s" % exited.result["key_id"])


def test_sign_with_an_unreadable_key_file_names_it(run_module, repo, tmp_path):
    missing = str(tmp_path / "nope.pem")
    exited = run_module(dogestry_sign.main, dict(remote=repo.url, image="app:1", private_key_path=missing))
    assert exited.failed and exited.result["msg"] == "private_key_path %s cannot be read: No such file or directory" % missing
