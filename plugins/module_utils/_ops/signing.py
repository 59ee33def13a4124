# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Signed releases: signatures stored as OCI referrers in cosign's format, and the policy that checks them.

A signature is what `cosign sign --key` stores when its signing config names no services (no
transparency log, no certificate authority): a sigstore bundle (v0.3) holding a DSSE envelope over an
in-toto statement whose subject is the signed manifest's digest (predicate type
https://sigstore.dev/cosign/sign/v1), pushed as an OCI artifact manifest (empty config, one layer: the
bundle) whose `subject` is the signed manifest. So `cosign verify --key K.pub --insecure-ignore-tlog`
checks what dogestry_sign writes, and the policy here checks what cosign writes.

What is signed is the digest a tag names: OCI content kept as pushed (an image manifest, an index),
or for an image dogestry_push stored the digest of Manifest.oci_bytes(), which the accelerator serves
and Docker records. An index's signature covers the platform images it names by digest.

Nothing read is trusted before it is checked: the signature manifest and the bundle against their
digests and size bounds, the DSSE signature against a trusted key, and only then the statement's
subject against the digest being pulled.

May import every layer below (_format, _storage, _codecs, _docker); not _peers, no front end.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

from .._errors import DogestryError, FormatError, RemoteNotFoundError
from .._format.keys import digest_of, load_json, object_key, oci_manifest_key, referrers_prefix, sha256_hex, split_digest
from .._format.oci import Descriptor, IMAGE_CONFIG_MEDIA_TYPES, OCI_MANIFEST_MEDIA_TYPE, OciManifest
from .._format.reference import ImageRef
from .._storage.base import read_bounded
from .._storage.repository import Repository, Target
from .leases import drop_lease, write_lease

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
MAX_SIGNATURE_MANIFEST = 64 << 10   # cosign's is under 1 KiB
MAX_BUNDLE = 1 << 20                # a bundle with a certificate chain and log entries is a few KiB
MAX_CANDIDATES = 100                # referrers of one digest examined (signatures, SBOMs, attestations)
MEMO = 4096                         # verified digests an accelerator remembers


class SignatureError(DogestryError):
    """A release is not signed by a trusted key, or a key cannot be used; str() is one line."""


def _require_cryptography(what: str) -> None:
    if not HAS_CRYPTOGRAPHY:
        raise DogestryError("%s needs the Python library cryptography (pip install cryptography)" % what)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _short(digest: str) -> str:
    return digest[:19] + "…"


# ---- keys -----------------------------------------------------------------------------------

class TrustedKey:
    """A public key a signature may be made with; `key_id` is cosign's hint (base64 sha256 of the DER key)."""

    def __init__(self, public_key, name: str):
        if HAS_CRYPTOGRAPHY and isinstance(public_key, ec.EllipticCurvePublicKey):
            algorithm = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}.get(
                public_key.curve.name)
            if algorithm is None:
                raise SignatureError("%s: curve %s is not supported (P-256, P-384 or P-521)" % (name, public_key.curve.name))
        elif HAS_CRYPTOGRAPHY and isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise SignatureError("%s: an RSA key of %d bits is too weak (2048 or more)" % (name, public_key.key_size))
            algorithm = hashes.SHA256
        else:
            raise SignatureError("%s: %s keys are not supported: use an ECDSA (P-256, as cosign generate-key-pair "
                                 "makes) or RSA key" % (name, type(public_key).__name__.replace("PublicKey", "").lstrip("_")))
        self.public_key, self.name, self._hash = public_key, name, algorithm
        der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key_id = _b64(hashlib.sha256(der).digest())

    def pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.public_key, ec.EllipticCurvePublicKey):
                self.public_key.verify(signature, data, ec.ECDSA(self._hash()))
            else:
                self.public_key.verify(signature, data, padding.PKCS1v15(), self._hash())
            return True
        except (InvalidSignature, ValueError):
            return False


class SigningKey:
    def __init__(self, private_key, name: str):
        self.private_key = private_key
        self.public = TrustedKey(private_key.public_key(), name)
        self.key_id = self.public.key_id

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(data, ec.ECDSA(self.public._hash()))
        return self.private_key.sign(data, padding.PKCS1v15(), self.public._hash())


def load_signing_key(pem, password=None, name: str = "the signing key") -> SigningKey:
    """A PEM private key (PKCS#8 or traditional, optionally encrypted with `password`); messages never show it."""
    _require_cryptography("signing")
    data = pem.encode("utf-8") if isinstance(pem, str) else bytes(pem)
    if b"SIGSTORE PRIVATE KEY" in data:
        raise SignatureError("%s is in cosign's own encrypted format: give a PEM private key instead (openssl genpkey "
                             "-algorithm EC -pkeyopt ec_paramgen_curve:P-256 makes one; cosign import-key-pair "
                             "--key KEY.pem gives cosign the same key)" % name)
    if password is not None and not isinstance(password, bytes):
        password = str(password).encode("utf-8")
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError:
        raise SignatureError("%s is encrypted: give its password" % name if not password
                             else "%s is not encrypted: give no password" % name)
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError("%s is not a PEM private key, or its password is wrong" % name)
    return SigningKey(key, name)


def load_trusted_keys(items) -> List[TrustedKey]:
    """Trusted keys from PEM texts or paths of PEM files: public keys, or certificates (their key is used)."""
    _require_cryptography("checking signatures")
    keys: Dict[str, TrustedKey] = {}
    for number, item in enumerate(items or (), 1):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        if text.lstrip().startswith("-----BEGIN"):
            name, data = "trusted key #%d" % number, text.encode("utf-8")
        else:
            name = text.strip()
            try:
                with open(name, "rb") as f:
                    data = f.read(1 << 20)
            except OSError as exc:
                raise SignatureError("trusted key %s cannot be read: %s" % (name, exc.strerror or exc))
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                public_key = x509.load_pem_x509_certificate(data).public_key()
            else:
                public_key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise SignatureError("%s is not a PEM public key or certificate" % name)
        key = TrustedKey(public_key, name)
        keys.setdefault(key.key_id, key)
    return list(keys.values())


# ---- the signature format -------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(digest: str) -> bytes:
    algorithm, hexdigest = split_digest(digest)
    return json.dumps({"_type": STATEMENT_TYPES[0], "subject": [{"digest": {algorithm: hexdigest}, "annotations": {}}],
                       "predicateType": PREDICATE_TYPE, "predicate": {}}, separators=(",", ":")).encode("utf-8")


def make_bundle(key: SigningKey, digest: str) -> bytes:
    payload = statement(digest)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return json.dumps({"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": {"publicKey": {"hint": key.key_id}},
                       "dsseEnvelope": {"payload": _b64(payload), "payloadType": PAYLOAD_TYPE,
                                        "signatures": [{"sig": _b64(signature)}]}},
                      separators=(",", ":")).encode("utf-8")


def signature_manifest(subject: Descriptor, bundle: bytes, created: str) -> bytes:
    """The artifact manifest cosign pushes for a bundle (OCI 1.1 referrer of `subject`)."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE, "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": digest_of("sha256", EMPTY_CONFIG), "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": digest_of("sha256", bundle), "size": len(bundle)}],
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": PREDICATE_TYPE, "org.opencontainers.image.created": created},
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    }, separators=(",", ":")).encode("utf-8")


def _statement_names(payload: bytes, digest: str) -> Optional[str]:
    """None if the (already authenticated) statement signs `digest` as a release; else what it names instead."""
    algorithm, hexdigest = split_digest(digest)
    doc = load_json(payload)
    if not isinstance(doc, dict) or doc.get("_type") not in STATEMENT_TYPES:
        return "its payload is not an in-toto statement"
    if doc.get("predicateType") != PREDICATE_TYPE:
        return "it is an attestation (%s), not a signature" % str(doc.get("predicateType"))[:100]
    subjects = doc.get("subject")
    if not isinstance(subjects, list):
        return "its statement has no subject"
    named = []
    for subject in subjects[:MAX_CANDIDATES]:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(digests, dict):
            if digests.get(algorithm) == hexdigest:
                return None
            named.extend("%s:%s" % (k, v) for k, v in digests.items() if isinstance(v, str))
    return "it signs %s, not this digest" % (", ".join(_short(n) for n in named[:2]) or "nothing")


# ---- reading signatures ---------------------------------------------------------------------

@dataclass(frozen=True)
class Verified:
    digest: str         # what is signed
    key_id: str         # the trusted key that signed it (cosign's hint)
    key: str            # where that key came from (a path, or "trusted key #N")
    signature: str      # digest of the signature manifest

    def result(self) -> Dict[str, str]:
        return {"digest": self.digest, "key_id": self.key_id, "key": self.key, "signature": self.signature}


def _read(repo: Repository, key: str, digest: str, limit: int, what: str) -> bytes:
    """A small object, bounded and checked against its digest."""
    with repo.remote.open(key) as body:
        data = read_bounded(body, limit, lambda: FormatError("%s is larger than %d bytes" % (what, limit)))
    if digest_of(split_digest(digest)[0], data) != digest:
        raise FormatError("%s does not match its digest" % what)
    return data


def _check_one(repo: Repository, digest: str, candidate: str, keys: List[TrustedKey]) -> Tuple[Optional[TrustedKey], Optional[str]]:
    """(the trusted key that signed `digest`, None) or (None, why not); (None, None): not a signature at all."""
    what = "signature %s" % _short(candidate)
    try:
        manifest = OciManifest.parse(_read(repo, oci_manifest_key(candidate), candidate, MAX_SIGNATURE_MANIFEST, what),
                                     None, what)
        if manifest.artifact_type != BUNDLE_MEDIA_TYPE and not any(l.media_type == BUNDLE_MEDIA_TYPE for l in manifest.layers):
            return None, None       # an SBOM, an attestation of another kind: not ours to judge
        if manifest.subject is None or manifest.subject.digest != digest:
            return None, "%s belongs to %s" % (what, _short(manifest.subject.digest) if manifest.subject else "no subject")
        layer = next((l for l in manifest.layers if l.media_type == BUNDLE_MEDIA_TYPE), None)
        if layer is None or layer.size > MAX_BUNDLE:
            return None, "%s has no bundle of at most %d bytes" % (what, MAX_BUNDLE)
        bundle = load_json(_read(repo, object_key(layer.digest), layer.digest, MAX_BUNDLE, what + "'s bundle"))
        envelope = bundle.get("dsseEnvelope") if isinstance(bundle, dict) else None
        if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
            return None, "%s holds no DSSE envelope of an in-toto statement" % what
        payload = base64.b64decode(str(envelope.get("payload")), validate=True)
        signatures = envelope.get("signatures")
        if not isinstance(signatures, list) or not signatures:
            return None, "%s holds no signature" % what
        signed = pae(PAYLOAD_TYPE, payload)
        for entry in signatures[:16]:
            raw = base64.b64decode(str(entry.get("sig") if isinstance(entry, dict) else ""), validate=True)
            for key in keys:
                if key.verifies(raw, signed):
                    wrong = _statement_names(payload, digest)      # read only once a trusted key vouches for it
                    return (None, "%s is by a trusted key, but %s" % (what, wrong)) if wrong else (key, None)
        hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint") \
            if isinstance(bundle.get("verificationMaterial"), dict) else None
        return None, "%s is by a key that is not trusted%s" % (what, " (key id %s)" % str(hint)[:60] if hint else "")
    except RemoteNotFoundError:
        return None, "%s is listed but not stored" % what
    except (FormatError, ValueError, TypeError, AttributeError, binascii.Error) as exc:
        return None, "%s is malformed (%s)" % (what, str(exc)[:200])


def subject_digest(repo: Repository, target: Target) -> str:
    """The digest a signature of what a tag names must sign (a dogestry manifest: its Manifest.oci_bytes())."""
    if isinstance(target, Descriptor):
        return target.digest
    return "sha256:" + sha256_hex(repo.read_manifest(target).oci_bytes())


class Policy:
    """Trusted keys, and the verdicts they gave (a verified digest stays verified: it is immutable)."""

    def __init__(self, keys: List[TrustedKey]):
        if not keys:
            raise SignatureError("a signature policy needs at least one trusted key")
        self.keys = keys
        self._verified: Dict[str, Verified] = {}
        self._covered: Dict[str, str] = {}      # digest -> the signed index naming it
        self._lock = threading.Lock()

    def require(self, repo: Repository, target: Target, what: str) -> Verified:
        """The signature of what a tag (or image ID) names, by a trusted key; SignatureError if there is none."""
        return self.require_digest(repo, subject_digest(repo, target), what)

    def require_digest(self, repo: Repository, digest: str, what: str) -> Verified:
        with self._lock:
            known = self._verified.get(digest)
        if known is not None:
            return known
        problems, prefix = [], referrers_prefix(digest)
        for info in itertools.islice(repo.remote.list(prefix), MAX_CANDIDATES):
            candidate = info.key[len(prefix):].replace("-", ":", 1)
            try:
                split_digest(candidate)
            except FormatError:
                continue
            key, problem = _check_one(repo, digest, candidate, self.keys)
            if key is not None:
                verified = Verified(digest, key.key_id, key.name, candidate)
                with self._lock:
                    if len(self._verified) >= MEMO:
                        self._verified.clear()
                    self._verified[digest] = verified
                return verified
            if problem:
                problems.append(problem)
        if not problems:
            raise SignatureError("%s (%s) is not signed: no signature is stored for it (dogestry_sign or cosign sign "
                                 "--key signs it)" % (what, _short(digest)))
        raise SignatureError("%s (%s) has no valid signature by a trusted key (%d trusted): %s%s" % (
            what, _short(digest), len(self.keys), "; ".join(problems[:3]),
            " (and %d more)" % (len(problems) - 3) if len(problems) > 3 else ""))

    def admit(self, repo: Repository, digest: str, manifest: Optional[OciManifest], what: str) -> None:
        """Whether a registry may serve a manifest (SignatureError if not): signed, named by a signed index it
        served, or an artifact Docker cannot run (signatures and SBOMs stay readable, so cosign can verify)."""
        if manifest is not None and not manifest.is_index and (
                manifest.config is None or manifest.config.media_type not in IMAGE_CONFIG_MEDIA_TYPES):
            return
        with self._lock:
            admitted = digest in self._covered
        if not admitted:
            self.require_digest(repo, digest, what)
        if manifest is not None and manifest.is_index:
            with self._lock:
                if len(self._covered) >= MEMO:
                    self._covered.clear()
                self._covered.update((child.digest, digest) for child in manifest.manifests)


# ---- signing --------------------------------------------------------------------------------

@dataclass
class SignPlan:
    requested: str
    ref: Optional[ImageRef]
    subject: Descriptor         # the manifest signed: media type, digest, size
    key_id: str
    existing: Optional[str] = None     # a signature by this key that already verifies

    @property
    def reason(self) -> Optional[str]:
        return self.describe(done=False)

    def describe(self, done: bool) -> Optional[str]:
        if self.existing:
            return None
        return "%s (%s): signature by key %s %s" % (self.ref or self.requested, _short(self.subject.digest), self.key_id,
                                                    "stored" if done else "would be stored")

    def result(self) -> Dict:
        return {"image": str(self.ref) if self.ref else None, "digest": self.subject.digest,
                "media_type": self.subject.media_type, "key_id": self.key_id, "signature": self.existing,
                "changed": self.reason is not None, "reason": self.reason}


def plan_sign(repo: Repository, requested: str, key: SigningKey) -> SignPlan:
    """What a tag (or image-ID prefix) names, as it is signed; and whether this key signed it already."""
    repo.check()
    ref, target = repo.resolve_target(requested)
    if isinstance(target, Descriptor):
        manifest = repo.read_oci_manifest(target.digest)       # verified: the tag's own descriptor is a claim
        subject = Descriptor(manifest.media_type, target.digest, len(manifest.data))
    else:
        data = repo.read_manifest(target).oci_bytes()
        subject = Descriptor(OCI_MANIFEST_MEDIA_TYPE, "sha256:" + sha256_hex(data), len(data))
    plan = SignPlan(requested, ref, subject, key.key_id)
    try:
        plan.existing = Policy([key.public]).require_digest(repo, subject.digest, requested).signature
    except SignatureError:
        pass
    return plan


def execute_sign(repo: Repository, plan: SignPlan, key: SigningKey, now=time.time) -> Dict:
    """Store the signature as the registry write path stores a pushed referrer: blobs, manifest, then its record."""
    result = plan.result()
    if plan.existing:
        return result
    bundle = make_bundle(key, plan.subject.digest)
    data = signature_manifest(plan.subject, bundle, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now())))
    digest = digest_of("sha256", data)
    lease = write_lease(repo, [sha256_hex(EMPTY_CONFIG), sha256_hex(bundle)])
    try:
        repo.hold_oci_content()       # before the first object a version-1 reader cannot see
        repo.remote.put(object_key(digest_of("sha256", EMPTY_CONFIG)), EMPTY_CONFIG)
        repo.remote.put(object_key(digest_of("sha256", bundle)), bundle)
        repo.write_oci_manifest(digest, OciManifest.parse(data, None, "the signature"))
    finally:
        drop_lease(repo, lease)
    result.update(signature=digest, reason=plan.describe(done=True))
    return result
