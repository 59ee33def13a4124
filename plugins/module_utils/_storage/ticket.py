# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Signed pull URLs: one URL lets a host with no credentials pull one name:tag, for a while.

Minting (a host with credentials, on an S3 remote) resolves the tag to its manifest and writes
an immutable ticket object ``tickets/<expires_at>-<random hex>.json``::

    {"dogestry_ticket": 1, "image": "name:tag", "manifest": "sha256:…", "expires_at": <epoch>,
     "objects": {"<key>": {"url": "<presigned GET URL>", "size": <bytes>}, …}}

covering dogestry.json, the manifest, the config and every layer blob in its stored encoding,
and returns a presigned GET URL of the ticket itself.  The expiry is in the key so prune can
drop expired tickets without reading them; a live ticket pins its manifest against prune.
Sizes are in the ticket because a presigned GET URL cannot be used for HEAD.

Pulling: `remote_from_url(<that URL>)` fetches the ticket and gives a read-only `TicketRemote`
that serves exactly those keys and answers the tag key of the ticket's image with the pinned
manifest, so the engine's plan_pull/execute_pull run unchanged and verify every byte by sha256.
The URL's query (its signature, and with temporary credentials the session token) is the secret: it
never appears in `url` or messages.

May import _errors, _transfer, _format and the rest of _storage.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit
import time
from typing import Dict, Optional, Tuple, Union

from .._errors import BlobCorruptError, FormatError, ImageReferenceError, RemoteAuthError, RemoteNotFoundError, RemoteUnsupportedError
from .._format.keys import VERSION_KEY, canonical_json, load_json, manifest_key, parse_digest
from .._format.reference import ImageRef, parse_image_ref
from .._format.tags import ref_document, tag_key
from .base import ObjectInfo
from .http import HttpRemote, display_url, format_time, signed_url_expiry
from .repository import Repository

TICKET_VERSION = 1
TICKETS_PREFIX = "tickets/"


def ticket_key(expires_at: int) -> str:
    return "%s%010d-%s.json" % (TICKETS_PREFIX, expires_at, secrets.token_hex(16))


def ticket_expiry_from_key(key: str) -> Optional[int]:
    """'tickets/0001700000-ab….json' -> 1700000 (None for anything else)."""
    if not key.startswith(TICKETS_PREFIX) or not key.endswith(".json"):
        return None
    stamp = key[len(TICKETS_PREFIX):].split("-", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def ticket_objects(repo: Repository, ref: Union[str, ImageRef]) -> Tuple[ImageRef, str, Dict[str, ObjectInfo]]:
    """What a ticket for `ref` would cover: (ref, manifest oid, {key: info}); raises if it cannot be signed."""
    remote = repo.remote
    if not hasattr(remote, "presign_get"):
        raise RemoteUnsupportedError("%s cannot sign URLs: signed pull URLs need an s3:// remote" % repo.url)
    ref = parse_image_ref(ref) if isinstance(ref, str) else ref
    repo.check()
    _ref, oid = repo.resolve(str(ref))     # an OCI index: its linux/amd64 image (a ticket names one image)
    manifest = repo.read_manifest(oid)
    keys = [VERSION_KEY, manifest_key(oid), manifest.config_key] + list(dict.fromkeys(l.key for l in manifest.layers))
    found = remote.stat(keys)
    absent = [key for key in keys if key not in found]
    if absent:
        raise BlobCorruptError("%s is damaged: %s of %s is missing (push the image again)" % (repo.url, absent[0], ref))
    return ref, oid, {key: found[key] for key in keys}


def mint_pull_ticket(repo: Repository, ref: Union[str, ImageRef], expires_in: int,
                     now: Optional[float] = None) -> Tuple[str, int]:
    """Write a ticket for `ref` and return (signed URL of the ticket, expiry in epoch seconds)."""
    ref, oid, found = ticket_objects(repo, ref)
    remote = repo.remote
    expires_at = int((time.time() if now is None else now) + int(expires_in))
    objects = {key: {"url": remote.presign_get(key, expires_in), "size": info.size} for key, info in found.items()}
    ticket = {"dogestry_ticket": TICKET_VERSION, "image": str(ref), "manifest": "sha256:" + oid,
              "expires_at": expires_at, "objects": objects}
    key = ticket_key(expires_at)
    remote.put(key, canonical_json(ticket))
    return remote.presign_get(key, expires_in), expires_at


class TicketRemote(HttpRemote):
    """The read-only remote one ticket describes. `image` is the name:tag it was minted for."""

    def __init__(self, ticket_url: str, doc: dict, validate_certs=True, ca_bundle=None, jobs=4):
        super().__init__(ticket_url, validate_certs, ca_bundle, jobs)
        self.base = ""
        where = display_url(ticket_url)
        try:
            if doc.get("dogestry_ticket") != TICKET_VERSION:
                raise ValueError("ticket version %r" % doc.get("dogestry_ticket"))
            self.ref = parse_image_ref(doc["image"], default_tag=None)
            self.manifest_oid = parse_digest(doc["manifest"])
            self.expires_at = int(doc["expires_at"])
            self.objects = {str(key): (str(entry["url"]), int(entry["size"])) for key, entry in doc["objects"].items()}
            if not all(url.lower().startswith(("https://", "http://")) for url, _size in self.objects.values()):
                raise ValueError("object URLs must be http(s)")
            plain = [url for url, _size in self.objects.values() if url.lower().startswith("http://")]
            if plain and ticket_url.lower().startswith("https://"):
                # a ticket that came over TLS must not send the pull's bytes and signatures in the clear
                raise ValueError("object URL %s is plain http in a ticket fetched over https: refused" % display_url(plain[0]))
        except (ValueError, TypeError, KeyError, AttributeError, FormatError, ImageReferenceError) as exc:
            raise FormatError("%s is not a valid dogestry signed pull URL: %s" % (where, exc))
        self.image = str(self.ref)
        self.url = "signed pull URL for %s (%s)" % (self.image, where)
        self._tag_key = tag_key(self.ref.name, self.ref.tag)

    @classmethod
    def from_url(cls, url: str, validate_certs=True, ca_bundle=None, jobs=None, **_ignored) -> "TicketRemote":
        expiry = signed_url_expiry(url)
        if expiry is not None and expiry < time.time():
            raise RemoteAuthError("signed URL expired at %s; mint a new one (%s)" % (format_time(expiry), display_url(url)))
        fetcher = HttpRemote(url, validate_certs, ca_bundle, jobs or 4)
        try:
            body = fetcher.get_url(url, "reading the signed pull URL")
        except RemoteNotFoundError:
            raise RemoteNotFoundError("signed pull URL not found (HTTP 404 from %s): its ticket was deleted, or the "
                                      "URL is incomplete; mint a new one" % urlsplit(url).netloc)
        try:
            doc = load_json(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "dogestry_ticket" not in doc:
            raise RemoteUnsupportedError(
                "%s is not a dogestry signed pull URL (a remote directory URL ends with '/', without a query)"
                % display_url(url))
        remote = cls(url, doc, validate_certs, ca_bundle, jobs or 4)
        remote._check_expiry()
        return remote

    def _check_expiry(self):
        if time.time() > self.expires_at:
            raise RemoteAuthError("signed URL expired at %s; mint a new one (%s)"
                                  % (format_time(self.expires_at), self.url))

    def _url_for(self, key):
        if key not in self.objects:
            raise RemoteNotFoundError("not found: %s is not covered by the %s" % (key, self.url))
        return self.objects[key][0]

    def _display(self, key):
        return "%s in the %s" % (key, self.url)

    def open(self, key, size=None):
        self._check_expiry()
        return super().open(key, size)

    def get(self, key):
        if key == self._tag_key:
            return ref_document(self.manifest_oid)
        return super().get(key)

    def stat(self, keys):
        return {key: ObjectInfo(key, self.objects[key][1], 0.0) for key in keys if key in self.objects}
