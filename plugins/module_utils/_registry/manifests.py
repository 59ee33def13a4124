# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Serving manifests (GET/HEAD /v2/NAME/manifests/REF) by tag or digest: the dogestry manifest as an OCI
manifest, pushed OCI content verbatim, each checked against the signature policy when there is one;
and the referrers API.

May import _errors, _format, _storage, _ops.signing and the rest of _registry.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Dict, List, Union
from time import monotonic as _monotonic

from .._errors import FormatError, RemoteNotFoundError
from .._format.keys import load_json, referrers_prefix
from .._format.oci import Descriptor, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE
from .._format.reference import _TAG
from .._ops.signing import SignatureError
from .routes import ApiError, MAX_REFERRERS, Response, accepts_oci


class ManifestReads:
    """GET/HEAD of manifests and the referrers API, a part of RegistryApi (api.py): uses its repo, policy, writer
    and what it knows of the remote."""

    def _thin_manifest_exists(self, digest: str) -> bool:
        """An index may name an image dogestry_push stored, by the digest of its Manifest.oci_bytes()."""
        return digest.startswith("sha256:") and self._known(self._by_digest, digest[7:], _monotonic) is not None

    def _manifest(self, names: List[str], ref: str, accept: List[str], head: bool, clock) -> Response:
        what = "%s%s%s" % (names[-1], "@" if ":" in ref else ":", ref)     # for a refusal's message
        if ":" in ref:
            digest = self._digest(ref)
            with self._lock:       # an image this API has shown already: no remote request
                target: Union[str, Descriptor, None] = self._by_digest.get(digest[7:]) if digest.startswith("sha256:") else None
            if target is None and self._holds_images():
                try:
                    return self._verbatim_manifest(Descriptor("", digest, 0), head, what)
                except RemoteNotFoundError:
                    pass
                if digest.startswith("sha256:"):
                    target = self._known(self._by_digest, digest[7:], clock)
            if target is None:
                raise ApiError(404, "MANIFEST_UNKNOWN", "manifest %s is not on this remote" % ref)
        else:
            if not _TAG.match(ref):
                raise ApiError(400, "MANIFEST_INVALID", "invalid tag %r" % ref[:130])
            _name, target = self._resolve_tag(names, ref)
            if isinstance(target, Descriptor):
                try:
                    return self._verbatim_manifest(target, head, what)
                except RemoteNotFoundError:
                    raise ApiError(404, "MANIFEST_UNKNOWN", "tag %s names manifest %s, which is missing from the "
                                   "remote" % (ref, target.digest))
        _manifest, body, digest = self._learn(target)
        if not accepts_oci(accept):
            raise ApiError(404, "MANIFEST_UNKNOWN",
                           "the image is served only as %s, which the Accept header leaves out" % OCI_MANIFEST_MEDIA_TYPE)
        self._admit("sha256:" + digest, None, what)
        return self._manifest_response(OCI_MANIFEST_MEDIA_TYPE, "sha256:" + digest, body, head)

    def _verbatim_manifest(self, target: Descriptor, head: bool, what: str) -> Response:
        """A manifest, index or artifact stored as pushed (read and verified; RemoteNotFoundError if absent)."""
        manifest = self.repo.read_oci_manifest(target.digest)
        self._admit(target.digest, manifest, what)
        return self._manifest_response(manifest.media_type, target.digest, manifest.data, head)

    def _admit(self, digest: str, manifest, what: str) -> None:
        """With a signature policy, an image Docker could run is served only if a trusted key signed it (or a
        signed index served here names it): 403 DENIED, saying why. Signatures themselves stay readable."""
        if self.policy is not None:
            try:
                self.policy.admit(self.repo, digest, manifest, what)
            except SignatureError as exc:
                # Docker shows a HEAD's status only: the reason goes to the accelerator's log too
                logging.getLogger("dogestry.serve").warning("refused: %s", exc)
                raise ApiError(403, "DENIED", str(exc))

    @staticmethod
    def _manifest_response(media_type: str, digest: str, body: bytes, head: bool) -> Response:
        headers = [("Content-Type", media_type), ("Content-Length", str(len(body))),
                   ("Docker-Content-Digest", digest), ("ETag", '"%s"' % digest),
                   ("Docker-Distribution-API-Version", "registry/2.0")]
        return Response(200, headers, b"" if head else body, 0 if head else len(body))

    def _referrers(self, ref: str, query: Dict[str, str], head: bool) -> Response:
        """The manifests whose subject is `ref` (an index, possibly empty), filtered by artifactType."""
        digest = self._digest(ref)
        wanted = query.get("artifactType")
        found = []
        if self._holds_images():
            for info in itertools.islice(self.repo.remote.list(referrers_prefix(digest)), MAX_REFERRERS):
                try:
                    doc = load_json(self.repo.remote.get(info.key))
                    descriptor = Descriptor.from_doc(doc, ("artifactType", "annotations"))
                except (ValueError, FormatError, RemoteNotFoundError):
                    continue        # a damaged record hides only itself
                if wanted is None or descriptor.fields.get("artifactType") == wanted:
                    found.append(descriptor.to_doc())
        extra = [("OCI-Filters-Applied", "artifactType")] if wanted is not None else []
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": found}).encode()
        headers = [("Content-Type", OCI_INDEX_MEDIA_TYPE), ("Content-Length", str(len(body))),
                   ("Docker-Distribution-API-Version", "registry/2.0")] + extra
        return Response(200, headers, b"" if head else body, 0 if head else len(body))
