# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""A fleet's peer configuration (who the peers are, the shared secret, this host's address) and what
every peer checks of an object it passes on.

May import _errors, _format and _peers.policy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional
from urllib.parse import urlsplit

from .._codecs import decoder
from .._errors import BlobCorruptError, DogestryError
from .._format.content_keys import peer_key
from .._storage.base import Reader
from .policy import Settings


LOG = logging.getLogger("dogestry.peers")
PREFIX = "/peer/v1/"
PIECE = 256 << 10           # bytes per read from a peer, and per write to one
RANGE_PIECE = 8 << 20       # bytes per ranged read of the remote when a body goes on from the remote
MIN_SECRET = 16             # characters of the fleet secret, at least
POOL = 4                    # idle connections kept per peer


class PeerConfigError(DogestryError):
    """The peers file is missing, unreadable or malformed."""


@dataclass
class PeerConfig:
    peers: List[str]
    me: Optional[str]
    ca_file: Optional[str]
    secret: str
    settings: Settings = field(default_factory=Settings)

    @classmethod
    def from_file(cls, path: str, as_peer: bool = True) -> "PeerConfig":
        """The peers file. `as_peer`: this process serves peers (an accelerator) and is "self" in it; a
        client that is no peer (`dogestry pull`) ignores "self" and asks every peer, its own host's too."""
        try:
            with open(path, "rb") as handle:
                doc = json.loads(handle.read(1 << 20).decode("utf-8"))
        except OSError as exc:
            raise PeerConfigError("peers file %s: %s" % (path, exc.strerror or exc))
        except ValueError as exc:
            raise PeerConfigError("peers file %s is not JSON: %s" % (path, exc))
        where = "peers file %s" % path
        if not isinstance(doc, dict):
            raise PeerConfigError("%s: expected a JSON object" % where)
        unknown = set(doc) - {"self", "peers", "ca_file", "secret", "settings"}
        if unknown:
            raise PeerConfigError("%s: unknown field(s) %s" % (where, ", ".join(sorted(unknown))))
        peers = doc.get("peers")
        if not isinstance(peers, list) or not all(isinstance(peer, str) for peer in peers):
            raise PeerConfigError("%s: \"peers\" must be a list of https://HOST:PORT URLs" % where)
        me = doc.get("self") if as_peer else None
        peers = [peer_url(peer, where) for peer in peers]
        if me is not None:
            me = peer_url(me, where)
            peers = [peer for peer in peers if peer != me]
        secret = doc.get("secret")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET or any(c in secret for c in "\r\n"):
            raise PeerConfigError("%s: \"secret\" must be one line of at least %d characters, shared by the fleet"
                                  % (where, MIN_SECRET))
        ca_file = doc.get("ca_file")
        if ca_file is not None and not (isinstance(ca_file, str) and os.path.isfile(ca_file)):
            raise PeerConfigError("%s: \"ca_file\" %r is not a file" % (where, ca_file))
        settings = doc.get("settings") or {}
        if not isinstance(settings, dict) or set(settings) - set(Settings.__dataclass_fields__):
            raise PeerConfigError("%s: \"settings\" takes %s" % (where, ", ".join(sorted(Settings.__dataclass_fields__))))
        try:
            return cls(sorted(set(peers)), me, ca_file, secret, Settings.from_doc(settings))
        except TypeError as exc:
            raise PeerConfigError("%s: %s" % (where, exc))


def peer_url(text: str, where: str = "peer") -> str:
    """'https://HOST:PORT' (a bare HOST:PORT means https), normalized; PeerConfigError otherwise."""
    text = text.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "https" or not parts.hostname or not port or parts.path not in ("", "/") or parts.query:
        raise PeerConfigError("%s: %r is not a peer address (https://HOST:PORT)" % (where, text))
    host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
    return "https://%s:%d" % (host, port)


# ---- verifying what a key promises ----------------------------------------------------------

def verifier_for(key: str, what: str) -> Callable[[Reader], Iterator[bytes]]:
    """A verifier (as _storage/blob_cache.py takes it) of the object stored under a peer key: it reads the object as
    it is iterated and raises BlobCorruptError at the end unless the content is the one the key names."""
    promise = peer_key(key)
    if promise is None:
        raise DogestryError("internal error: %s is not a content-addressed key" % key)

    def verify(reader: Reader) -> Iterator[bytes]:
        hasher = hashlib.new(promise.algorithm)
        dec = decoder(promise.encoding, what)
        while True:
            chunk = reader.read(PIECE)
            for data in dec.decode(chunk) if chunk else (dec.finish(),):
                hasher.update(data)
            if not chunk:
                break
            yield chunk
        if hasher.hexdigest() != promise.hexdigest:
            raise BlobCorruptError("%s is corrupt: its content hashes to %s:%s"
                                   % (what, promise.algorithm, hasher.hexdigest()))
    return verify


def holds_promise(key: str, data: bytes) -> bool:
    """Whether a whole small object (stored as is) is the one its key names."""
    promise = peer_key(key)
    return promise is not None and promise.encoding == "none" and \
        hashlib.new(promise.algorithm, data).hexdigest() == promise.hexdigest


# ---- transport ------------------------------------------------------------------------------

class PeerFailure(Exception):
    """A peer did not answer usefully: `kind` is refused, timeout, broken or bad_answer."""

    def __init__(self, kind: str, why: str):
        Exception.__init__(self, why)
        self.kind = kind
