"""Signed releases: dogestry_sign's signatures (cosign's bundle format, as OCI referrers) and the policy that
admits only what a trusted key signed, over a directory remote: no sockets, no Docker.

Hostile cases are written the way a writer of the bucket would write them: straight into the remote."""

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops import signing as _signing
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.pull import plan_pull
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.keys import (
    digest_of, object_key, oci_manifest_key, referrer_key, referrers_prefix, sha256_hex,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.oci import Descriptor, OCI_MANIFEST_MEDIA_TYPE
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.prune import execute_prune, plan_prune
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.api import RegistryApi
from ansible_collections.dogestry.dogestry.plugins.module_utils._registry.writer import RegistryWriter
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.local import LocalRemote
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.repository import Repository
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.signing import (
    BUNDLE_MEDIA_TYPE, Policy, SignatureError, execute_sign, load_signing_key, load_trusted_keys, make_bundle, plan_sign, signature_manifest,
)
from ansible_collections.dogestry.dogestry.tests.unit.plugins.module_utils._registry.test_writer import (
    Image, call, multi_platform, push,
)
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.fake_images import store_image


def pem_of(private_key, password=None):
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_pem(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys():
    """Two release keys (ECDSA P-256, as cosign generates; RSA 3072) and a stranger's."""
    return {"release": ec.generate_private_key(ec.SECP256R1()), "next": rsa.generate_private_key(65537, 3072),
            "stranger": ec.generate_private_key(ec.SECP256R1())}


def signer(keys, which="release"):
    return load_signing_key(pem_of(keys[which]), None, which)


def policy(keys, *which):
    return Policy(load_trusted_keys([public_pem(keys[w]) for w in which]))


@pytest.fixture
def api(tmp_path):
    repo = Repository(LocalRemote(str(tmp_path / "remote")))
    writer = RegistryWriter(repo, str(tmp_path))
    yield RegistryApi(repo, writer=writer)
    writer.close()


@pytest.fixture
def repo(tmp_path):
    return Repository(LocalRemote(str(tmp_path / "remote")))


def sign(repo, image, key):
    return execute_sign(repo, plan_sign(repo, image, key), key)


def target(repo, image):
    return repo.read_target(parse_image_ref(image))


def refuse(check, *expected):
    with pytest.raises(SignatureError) as info:
        check()
    message = str(info.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, message
    return message


# ---- signing -----------------------------------------------------------------------------------

def test_an_image_dogestry_push_stored_is_signed_under_the_digest_it_is_served_as(repo, keys):
    oid, manifest = store_image(repo, "app:1", [b"layer one", b"layer two"])
    served = "sha256:" + sha256_hex(manifest.oci_bytes())
    key = signer(keys)
    plan = plan_sign(repo, "app:1", key)
    assert (plan.reason is not None, plan.subject.digest, plan.subject.media_type) == (True, served, OCI_MANIFEST_MEDIA_TYPE)
    result = sign(repo, "app:1", key)
    assert result["changed"] and result["digest"] == served and result["key_id"] == key.key_id
    # stored as cosign stores it: an artifact manifest whose subject is the image, with its referrer record
    record = json.loads(repo.remote.get(referrer_key(served, result["signature"])))
    assert record["artifactType"] == BUNDLE_MEDIA_TYPE and record["digest"] == result["signature"]
    stored = json.loads(repo.remote.get(oci_manifest_key(result["signature"])))
    assert stored["subject"] == {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": served, "size": len(manifest.oci_bytes())}
    assert json.loads(repo.remote.get("dogestry.json"))["version"] == 2
    assert list(repo.remote.list("leases/")) == []
    # signing again with the same key changes nothing; another key adds its own signature
    again = plan_sign(repo, "app:1", key)
    assert again.reason is None and again.existing == result["signature"]
    assert sign(repo, "app:1", signer(keys, "next"))["changed"]
    assert len(list(repo.remote.list(referrers_prefix(served)))) == 2
    verified = policy(keys, "release").require(repo, oid, "app:1")
    assert (verified.digest, verified.key_id) == (served, key.key_id)


def test_the_bundle_is_a_dsse_envelope_of_an_in_toto_statement_naming_the_digest(keys):
    key = signer(keys)
    digest = digest_of("sha256", b"some manifest")
    bundle = json.loads(make_bundle(key, digest))
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE and bundle["verificationMaterial"] == {"publicKey": {"hint": key.key_id}}
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert statement["subject"] == [{"digest": {"sha256": digest[7:]}, "annotations": {}}]
    assert statement["predicateType"] == "https://sigstore.dev/cosign/sign/v1"
    signed = _signing.pae(envelope["payloadType"], base64.b64decode(envelope["payload"]))
    assert signed.startswith(b"DSSEv1 28 application/vnd.in-toto+json %d {" % len(base64.b64decode(envelope["payload"])))
    assert key.public.verifies(base64.b64decode(envelope["signatures"][0]["sig"]), signed)


@pytest.mark.parametrize("pem, password, expected", [
    (lambda k: b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
     None, "cosign's own encrypted format"),
    (lambda k: pem_of(k["release"], b"s3cret"), None, "is encrypted: give its password"),
    (lambda k: pem_of(k["release"], b"s3cret"), "wrong", "password is wrong"),
    (lambda k: pem_of(k["release"]), "s3cret", "is not encrypted"),
    (lambda k: b"not a key", None, "is not a PEM private key"),
    (lambda k: pem_of(ed25519.Ed25519PrivateKey.generate()), None, "Ed25519 keys are not supported"),
    (lambda k: pem_of(rsa.generate_private_key(65537, 1024)), None, "1024 bits is too weak"),
])
def test_unusable_signing_keys_are_refused_in_one_line_without_showing_them(keys, pem, password, expected):
    data = pem(keys)
    message = refuse(lambda: load_signing_key(data, password, "release.pem"), "release.pem", expected)
    assert "BEGIN" not in message and "s3cret" not in message


def test_an_encrypted_key_signs_with_its_password(repo, keys):
    store_image(repo, "app:1", [b"layer"])
    key = load_signing_key(pem_of(keys["release"], b"s3cret"), "s3cret", "release.pem")
    assert sign(repo, "app:1", key)["changed"]
    assert policy(keys, "release").require(repo, target(repo, "app:1"), "app:1").key_id == key.key_id


def test_trusted_keys_are_pem_texts_files_or_certificates(tmp_path, keys):
    path = tmp_path / "release.pub"
    path.write_text(public_pem(keys["release"]))
    loaded = load_trusted_keys([str(path), public_pem(keys["next"]), public_pem(keys["release"])])
    assert [k.name for k in loaded] == [str(path), "trusted key #2"]       # the same key twice counts once
    refuse(lambda: load_trusted_keys([str(tmp_path / "missing.pub")]), "missing.pub cannot be read")
    refuse(lambda: load_trusted_keys(["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"]),
           "trusted key #1 is not a PEM public key or certificate")
    refuse(lambda: Policy([]), "at least one trusted key")


# ---- hostile cases: each is refused, in one line, before anything is loaded ---------------------

class UntouchableDaemon:
    """Every use of the daemon fails. The signature check runs beside the plan's own reads (which ask Docker what it
    has), so here the plan fails too: a pull its policy refuses must still say why in the signature's words, and a
    plan is never returned, so nothing can be handed to Docker."""

    def __getattr__(self, name):
        raise AssertionError("Docker was asked for %s (the plan's side, which fails here)" % name)


def test_an_unsigned_release_is_refused_before_anything_is_handed_to_docker(repo, keys):
    store_image(repo, "app:1", [b"layer"])
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:1", policy(keys, "release")),
           "app:1 (sha256:", "is not signed: no signature is stored for it")


def test_a_signature_by_another_key_is_refused_and_rotation_trusts_old_and_new(repo, keys):
    store_image(repo, "app:1", [b"layer"])
    stranger = sign(repo, "app:1", signer(keys, "stranger"))
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:1", policy(keys, "release", "next")),
           "has no valid signature by a trusted key (2 trusted)", "is by a key that is not trusted",
           "key id %s" % stranger["key_id"])
    sign(repo, "app:1", signer(keys, "next"))
    assert policy(keys, "release", "next").require(repo, target(repo, "app:1"), "app:1").key == "trusted key #2"


def test_a_valid_signature_moved_onto_another_digest_is_refused(repo, keys):
    store_image(repo, "app:1", [b"signed layer"])
    other_oid, _m = store_image(repo, "app:2", [b"evil layer"])
    signed = sign(repo, "app:1", signer(keys))
    other = _signing.subject_digest(repo, other_oid)
    # 1. its referrer record copied under the other digest
    record = repo.remote.get(referrer_key(signed["digest"], signed["signature"]))
    repo.remote.put(referrer_key(other, signed["signature"]), record)
    refuse(lambda: policy(keys, "release").require(repo, other_oid, "app:2"), "belongs to " + signed["digest"][:19])
    # 2. a new signature manifest naming the other digest, carrying the valid bundle of the first
    stored = json.loads(repo.remote.get(oci_manifest_key(signed["signature"])))
    bundle = repo.remote.get(object_key(stored["layers"][0]["digest"]))
    forged = signature_manifest(Descriptor(OCI_MANIFEST_MEDIA_TYPE, other, 1), bundle, "2026-01-01T00:00:00Z")
    repo.remote.put(oci_manifest_key(digest_of("sha256", forged)), forged)
    repo.remote.put(referrer_key(other, digest_of("sha256", forged)), b"{}")
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:2", policy(keys, "release")),
           "is by a trusted key, but it signs %s" % signed["digest"][:19], "not this digest")


def test_a_tag_re_pointed_after_signing_is_refused(repo, keys):
    store_image(repo, "app:1", [b"signed layer"])
    evil_oid, _m = store_image(repo, "evil:1", [b"evil layer"])
    sign(repo, "app:1", signer(keys))
    repo.write_tag(parse_image_ref("app:1"), evil_oid)
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:1", policy(keys, "release")), "app:1", "is not signed")


def _tamper_bundle(repo, signature, new_bundle):
    """Replace a signature's bundle (and so its manifest, and its record) as a bucket writer can."""
    stored = json.loads(repo.remote.get(oci_manifest_key(signature)))
    stored["layers"][0].update(digest=digest_of("sha256", new_bundle), size=len(new_bundle))
    repo.remote.put(object_key(digest_of("sha256", new_bundle)), new_bundle)
    data = json.dumps(stored).encode()
    subject = stored["subject"]["digest"]
    repo.remote.put(oci_manifest_key(digest_of("sha256", data)), data)
    repo.remote.put(referrer_key(subject, digest_of("sha256", data)), b"{}")
    repo.remote.delete(referrer_key(subject, signature))


@pytest.mark.parametrize("bundle, expected", [
    (b"not json at all", "is malformed"),
    (b"[" * 100000 + b"]" * 100000, "is malformed (JSON nested too deeply)"),
    (b"{" + b" " * (2 << 20) + b"}", "has no bundle of at most 1048576 bytes"),
    (json.dumps({"dsseEnvelope": {"payloadType": "text/plain", "payload": "", "signatures": []}}).encode(),
     "holds no DSSE envelope of an in-toto statement"),
    (json.dumps({"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "!!!",
                                  "signatures": [{"sig": "AAAA"}]}}).encode(), "is malformed"),
    (json.dumps({"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                                  "signatures": [{"sig": "AAAA"}]}}).encode(), "is by a key that is not trusted"),
])
def test_malformed_huge_or_deeply_nested_signatures_are_refused(repo, keys, bundle, expected):
    store_image(repo, "app:1", [b"layer"])
    signed = sign(repo, "app:1", signer(keys))
    _tamper_bundle(repo, signed["signature"], bundle)
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:1", policy(keys, "release")),
           "has no valid signature by a trusted key", expected)


def test_a_huge_or_corrupt_signature_manifest_is_refused(repo, keys):
    _oid, manifest = store_image(repo, "app:1", [b"layer"])
    digest = "sha256:" + sha256_hex(manifest.oci_bytes())
    huge = b"{" + b" " * (_signing.MAX_SIGNATURE_MANIFEST + 1) + b"}"
    repo.remote.put(oci_manifest_key(digest_of("sha256", huge)), huge)
    repo.remote.put(referrer_key(digest, digest_of("sha256", huge)), b"{}")
    liar = digest_of("sha256", b"what the key promises")
    repo.remote.put(oci_manifest_key(liar), b"something else")
    repo.remote.put(referrer_key(digest, liar), b"{}")
    repo.remote.put(referrer_key(digest, digest_of("sha256", b"listed only")), b"{}")
    refuse(lambda: policy(keys, "release").require(repo, target(repo, "app:1"), "app:1"),
           "is larger than 65536 bytes", "does not match its digest", "is listed but not stored")


def test_other_referrers_are_not_signatures(api, keys):
    from ansible_collections.dogestry.dogestry.tests.unit.plugins.module_utils._registry.test_writer import artifact_for
    image = Image()
    push(api, "app", "1", image)
    artifact_for(api, "app", image.manifest(), "application/vnd.docker.distribution.manifest.v2+json")
    refuse(lambda: policy(keys, "release").require(api.repo, target(api.repo, "app:1"), "app:1"), "is not signed")


def test_an_index_needs_its_own_signature_and_a_platform_signature_does_not_stand_for_it(api, keys):
    index, amd64, _arm64 = multi_platform(api)
    repo = api.repo
    child_tag = Descriptor(OCI_MANIFEST_MEDIA_TYPE, digest_of("sha256", amd64), len(amd64))
    repo.write_oci_tag(parse_image_ref("app:amd64"), child_tag)
    sign(repo, "app:amd64", signer(keys))
    refuse(lambda: plan_pull(UntouchableDaemon(), repo, "app:multi", policy(keys, "release")),
           "app:multi (%s" % digest_of("sha256", index)[:19], "is not signed")
    signed = sign(repo, "app:multi", signer(keys))
    assert signed["digest"] == digest_of("sha256", index) and signed["media_type"] == "application/vnd.oci.image.index.v1+json"
    assert policy(keys, "release").require(repo, target(repo, "app:multi"), "app:multi").digest == signed["digest"]


# ---- the accelerator: only signed images are served, signatures stay readable -------------------

def _error(body):
    errors = json.loads(body)["errors"]
    assert len(errors) == 1
    return errors[0]["code"], errors[0]["message"]


def test_the_accelerator_serves_only_signed_images(api, keys):
    image = Image()
    push(api, "app", "1", image)
    _oid, thin = store_image(api.repo, "thin:1", [b"thin layer"])
    api.policy = policy(keys, "release")
    for path in ("/v2/app/manifests/1", "/v2/app/manifests/" + digest_of("sha256", image.manifest()),
                 "/v2/thin/manifests/1"):
        status, headers, body = call(api, "GET", path, None)
        assert status == 403 and headers["Content-Type"] == "application/json", (path, body)
        code, message = _error(body)
        assert code == "DENIED" and "is not signed" in message
        assert call(api, "HEAD", path, None)[0] == 403
    signed = sign(api.repo, "app:1", signer(keys))
    sign(api.repo, "thin:1", signer(keys))
    status, _headers, body = call(api, "GET", "/v2/app/manifests/1", None)
    assert (status, body) == (200, image.manifest())
    assert call(api, "GET", "/v2/thin/manifests/1", None)[2] == thin.oci_bytes()
    # what cosign reads to verify stays readable: the referrers, the signature manifest, its bundle
    listed = json.loads(call(api, "GET", "/v2/app/referrers/" + signed["digest"], None)[2])["manifests"]
    assert [d["digest"] for d in listed] == [signed["signature"]]
    status, _headers, body = call(api, "GET", "/v2/app/manifests/" + signed["signature"], None)
    assert status == 200
    bundle = json.loads(body)["layers"][0]["digest"]
    assert call(api, "GET", "/v2/app/blobs/" + bundle, None)[0] == 200


def test_the_accelerator_serves_a_signed_index_and_then_the_platforms_it_names(api, keys):
    index, amd64, _arm64 = multi_platform(api)
    api.policy = policy(keys, "release")
    child = "/v2/app/manifests/" + digest_of("sha256", amd64)
    assert call(api, "GET", "/v2/app/manifests/multi", None)[0] == 403
    sign(api.repo, "app:multi", signer(keys))
    assert call(api, "GET", child, None)[0] == 403     # not yet named by a signed index served here
    assert call(api, "GET", "/v2/app/manifests/multi", None)[:3:2] == (200, index)
    assert call(api, "GET", child, None)[:3:2] == (200, amd64)


def test_a_signature_on_a_platform_image_does_not_admit_its_index(api, keys):
    index, amd64, _arm64 = multi_platform(api)
    api.repo.write_oci_tag(parse_image_ref("app:amd64"), Descriptor(OCI_MANIFEST_MEDIA_TYPE, digest_of("sha256", amd64),
                                                                    len(amd64)))
    sign(api.repo, "app:amd64", signer(keys))
    api.policy = policy(keys, "release")
    assert call(api, "GET", "/v2/app/manifests/" + digest_of("sha256", amd64), None)[0] == 200
    status, _headers, body = call(api, "GET", "/v2/app/manifests/multi", None)
    assert status == 403 and "is not signed" in _error(body)[1]


# ---- prune keeps signatures with their image ----------------------------------------------------

def test_prune_keeps_the_signature_of_an_image_dogestry_push_stored(repo, keys):
    _oid, manifest = store_image(repo, "app:1", [b"layer"])
    signed = sign(repo, "app:1", signer(keys))
    execute_prune(repo, plan_prune(repo, 60, now=time.time() + 3600), jobs=2)
    assert policy(keys, "release").require(repo, target(repo, "app:1"), "app:1").signature == signed["signature"]
    # and drops it once the image is gone
    repo.delete_tag(parse_image_ref("app:1"))
    execute_prune(repo, plan_prune(repo, 60, now=time.time() + 3600), jobs=2)
    assert list(repo.remote.list(referrers_prefix("sha256:" + sha256_hex(manifest.oci_bytes())))) == []
    assert list(repo.remote.list("oci-manifests/")) == []
