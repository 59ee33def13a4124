"""Signed pull URLs: minted on moto_server (real presigning), used with no AWS credentials at all."""

import json
import time
import urllib.request

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._storage import ticket as _ticket
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import (
    FormatError, ImageReferenceError, RemoteAuthError, RemoteNotFoundError, RemoteUnsupportedError,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import VERSION_KEY, manifest_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import ImageRef
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.tags import tag_key
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.factory import remote_from_url
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.ticket import TicketRemote, mint_pull_ticket, ticket_expiry_from_key
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_PROFILE")


@pytest.fixture
def repo(s3_env, s3_bucket):
    return Repository(remote_from_url("s3://%s/reg" % s3_bucket, endpoint_url=s3_env))


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def test_minted_url_pulls_without_credentials(repo, no_credentials, tmp_path):
    oid, manifest = store_image(repo, "team/app:1", [b"base layer", b"top layer"])
    url, expires_at = mint_pull_ticket(repo, "team/app:1", 300)
    assert expires_at - time.time() == pytest.approx(300, abs=5)
    remote = remote_from_url(url)
    assert isinstance(remote, TicketRemote) and remote.image == "team/app:1"
    assert "Signature" not in remote.url and "X-Amz" not in remote.url
    pulled = Repository(remote)
    assert pulled.check() and pulled.resolve("team/app:1") == (remote.ref, oid)
    assert pulled.read_config(pulled.read_manifest(oid))
    top = manifest.layers[1]
    assert pulled.remote.stat([top.key, "blobs/other"]) == {top.key: pulled.remote.stat([top.key])[top.key]}
    with pulled.remote.open(top.key, top.stored_size) as body:
        assert body.read() == b"top layer"


def test_ticket_object_is_immutable_json_named_by_expiry(repo):
    oid, manifest = store_image(repo, "app:1", [b"x"])
    url, expires_at = mint_pull_ticket(repo, "app:1", 60)
    [info] = list(repo.remote.list("tickets/"))
    assert ticket_expiry_from_key(info.key) == expires_at
    doc = json.loads(repo.remote.get(info.key))
    assert (doc["dogestry_ticket"], doc["image"], doc["manifest"]) == (1, "app:1", "sha256:" + oid)
    assert set(doc["objects"]) == {VERSION_KEY, manifest_key(oid), manifest.config_key, manifest.layers[0].key}
    assert repo.remote.put(info.key, b"{}") is False          # create-only, like every object but a tag


def test_ticket_pins_the_manifest_when_the_tag_moves(repo, no_credentials):
    first = store_image(repo, "app:1", [b"old"])[0]
    url = mint_pull_ticket(repo, "app:1", 60)[0]
    store_image(repo, "app:1", [b"new"])
    pulled = Repository(remote_from_url(url))
    assert pulled.resolve("app:1")[1] == first
    assert pulled.read_tag(ImageRef("app", "2")) is None


def test_expired_ticket_fails_clearly(repo, no_credentials, monkeypatch):
    store_image(repo, "app:1", [b"x"])
    url, expires_at = mint_pull_ticket(repo, "app:1", 1)
    monkeypatch.setattr(_ticket.time, "time", lambda: expires_at + 1)     # the clock, not a sleep against the TTL
    with pytest.raises(RemoteAuthError, match=r"^signed URL expired at \d{4}-\d\d-\d\dT[\d:]+Z; mint a new one"):
        remote_from_url(url)


def test_ticket_checks_its_own_expiry(repo, no_credentials, monkeypatch):
    store_image(repo, "app:1", [b"x"])
    remote = remote_from_url(mint_pull_ticket(repo, "app:1", 60)[0])
    monkeypatch.setattr(_ticket.time, "time", lambda: remote.expires_at + 1)
    with pytest.raises(RemoteAuthError, match="mint a new one"):
        remote.get("dogestry.json")


@pytest.mark.parametrize("mutate, error", [
    (lambda doc: doc.update(dogestry_ticket=2), "ticket version 2"),
    (lambda doc: doc.update(manifest="md5:00"), "malformed digest"),
    (lambda doc: doc["objects"]["dogestry.json"].update(url="file:///etc/passwd"), "must be http"),
])
def test_malformed_ticket_is_rejected(mutate, error):
    doc = {"dogestry_ticket": 1, "image": "a:1", "manifest": "sha256:" + "0" * 64, "expires_at": 2 ** 40,
           "objects": {"dogestry.json": {"url": "https://h/x", "size": 1}}}
    mutate(doc)
    with pytest.raises(FormatError, match="is not a valid dogestry signed pull URL: .*" + error):
        TicketRemote("https://h/t.json?X-Amz-Signature=s3cr3t", doc)


def test_uncovered_key_is_not_found():
    doc = {"dogestry_ticket": 1, "image": "a:1", "manifest": "sha256:" + "0" * 64, "expires_at": 2 ** 40,
           "objects": {}}
    remote = TicketRemote("https://h/t.json?X-Amz-Signature=s3cr3t", doc)
    assert remote.get(tag_key("a", "1")) == b"sha256:" + b"0" * 64 + b"\n"
    with pytest.raises(RemoteNotFoundError, match="is not covered by the signed pull URL for a:1"):
        remote.get("blobs/sha256/00/00")
    assert "s3cr3t" not in remote.url


def test_mint_needs_a_signing_remote_and_a_tag(repo, tmp_path):
    with pytest.raises(RemoteUnsupportedError, match="cannot sign URLs"):
        mint_pull_ticket(Repository(LocalRemote(str(tmp_path))), "app:1", 60)
    store_image(repo, "app:1", [b"x"])
    with pytest.raises(ImageReferenceError, match="app:2 is not on s3://"):
        mint_pull_ticket(repo, "app:2", 60)


def test_a_plain_json_url_is_not_a_ticket(repo):
    repo.remote.put("other.json", b"{}")
    url = repo.remote.presign_get("other.json", 60)
    assert urllib.request.urlopen(url).read() == b"{}"
    with pytest.raises(RemoteUnsupportedError, match="is not a dogestry signed pull URL"):
        remote_from_url(url)
