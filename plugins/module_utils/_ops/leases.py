# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The lease protocol that push, the registry's writer and prune share: a pusher writes a lease naming
what it is about to reference before it looks for what is stored; a running prune keeps a marker
rewritten; a pusher waits for running prunes, and prune spares what a live lease names.

May import _format and _storage.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Iterable, List, Optional, Set, Tuple

from .._errors import DogestryError, FormatError, RemoteError
from .._format.keys import blob_key, canonical_json, load_json, manifest_key, parse_digest, split_digest
from .._storage.base import ObjectInfo
from .._storage.repository import Repository


LEASES_PREFIX = "leases/"
MARKER_PREFIX = LEASES_PREFIX + "prune-"
MARKER_TTL = 600            # seconds a prune marker counts as a running prune after it was last rewritten
MARKER_REFRESH = MARKER_TTL / 4     # a running prune rewrites its marker this often
MARKER_POLL = 1.0
LEASE_TTL = 24 * 3600       # a push's lease protects its oids this long from its creation, whatever the grace


# ---- leases (the push side) -----------------------------------------------------------------

def write_lease(repo: Repository, oids: Iterable[str], expect: Iterable[str] = ()) -> str:
    """Announce what a push is about to reference; returns the lease key for drop_lease().

    `oids` are sha256 hex digests (layers, configs, dogestry manifests) or full digests
    ("sha512:<hex>" blobs, OCI manifests kept as pushed, which prune follows like a tag's).
    Then wait while a prune is running, and check that every key in `expect` (what the push plan
    found already stored) still exists; if one is gone a prune won the race: raise RemoteError
    so the push is re-planned (nothing was written that references the missing object).
    """
    key = "%s%s.json" % (LEASES_PREFIX, uuid.uuid4().hex)
    oids = set(oids)
    digests = {oid for oid in oids if ":" in oid}
    doc = {"dogestry_lease": 1, "created": int(time.time()), "oids": sorted(oids - digests)}
    if digests:     # a field of its own: releases that read only "oids" (sha256 hex) still parse the lease
        doc["digests"] = sorted(digests)
    repo.remote.put(key, canonical_json(doc))
    try:
        _wait_for_prunes(repo, key)
        expect = sorted(set(expect))
        gone = [k for k in expect if k not in repo.remote.stat(expect)] if expect else []
        if gone:
            raise RemoteError("%s on %s was deleted by a prune after this push was planned: run the push again"
                              % (gone[0], repo.url))
    except BaseException:
        drop_lease(repo, key)
        raise
    return key


def push_lease(repo: Repository, plan) -> str:
    """write_lease() for a push.py PushPlan: its config, layers and reused manifest, and what it found stored."""
    oids = [oid for oid in [plan.config_oid, plan.existing] if oid] + list(plan.diff_ids)
    expect = [entry.key for entry in plan.present.values()]
    if plan.existing:
        expect.append(manifest_key(plan.existing))
    elif plan.config_oid and not plan.config_missing:
        expect.append(blob_key(plan.config_oid))
    return write_lease(repo, oids, expect)


def drop_lease(repo: Repository, lease_key: str) -> None:
    repo.remote.delete(lease_key)


def _wait_for_prunes(repo: Repository, lease_key: str) -> None:
    """Wait while a prune marker is live by the store's clock: the lease just written carries the store's
    time (its modification time), and this host's monotonic clock says how long ago that was."""
    written = repo.remote.stat([lease_key]).get(lease_key)
    store_then, since = (written.modified if written else time.time()), time.monotonic()
    while True:
        store_now = store_then + (time.monotonic() - since)
        running = [info for info in repo.remote.list(MARKER_PREFIX) if info.modified > store_now - MARKER_TTL]
        if not running:
            return
        time.sleep(MARKER_POLL)


def _lease(repo: Repository, key: str) -> Tuple[Set[str], List[str]]:
    """A lease's sha256 oids and full digests; a malformed one stops the prune (it may protect anything)."""
    doc = _json(repo, key)
    try:
        oids = {parse_digest("sha256:" + str(oid)) for oid in doc.get("oids", [])}
        digests = ["%s:%s" % split_digest(digest) for digest in doc.get("digests", [])]
    except (FormatError, TypeError) as exc:
        raise FormatError("%s on %s is malformed (%s): fix or delete it before pruning" % (key, repo.url, exc))
    return oids, digests


def _lease_expiry(info: ObjectInfo) -> float:
    """A lease counts until LEASE_TTL after it was written (by the store's clock), whatever the grace period."""
    return info.modified + LEASE_TTL


def _json(repo: Repository, key: str) -> dict:
    try:
        doc = load_json(repo.remote.get(key))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return doc
    except ValueError as exc:
        raise FormatError("%s on %s is malformed (%s): fix or delete it before pruning" % (key, repo.url, exc))


class _Marker:
    """A running prune's marker: written on entry, rewritten every MARKER_REFRESH seconds by a timer thread
    however long a phase takes, deleted on exit. `check()` before each batch of deletions stops the prune
    when the marker could not be rewritten for MARKER_TTL / 2: pushes might soon stop waiting for it."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.key = "%s%s.json" % (MARKER_PREFIX, uuid.uuid4().hex)
        self._stop = threading.Event()
        self._written = 0.0
        self._error: Optional[Exception] = None

    def _write(self) -> None:
        self.repo.remote.put(self.key, canonical_json({"dogestry_prune": 1, "written": int(time.time())}), overwrite=True)
        self._written = time.monotonic()

    def _keep_fresh(self) -> None:
        while not self._stop.wait(MARKER_REFRESH):
            try:
                self._write()
            except DogestryError as exc:     # try again at the next tick; check() stops the prune if it lasts
                self._error = exc

    def check(self) -> None:
        stale = time.monotonic() - self._written
        if stale > MARKER_TTL / 2:
            raise RemoteError("prune stopped: its marker %s on %s could not be rewritten for %d s (%s); pushes could "
                              "stop waiting for it: run the prune again" % (self.key, self.repo.url, stale, self._error))

    def __enter__(self) -> "_Marker":
        self._write()
        self._thread = threading.Thread(target=self._keep_fresh, name="dogestry-prune-marker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.repo.remote.delete(self.key)
