# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The write side of the registry API: finished uploads and manifests, stored in the remote's format
(the upload sessions themselves are uploads.py's).

What a client pushes is kept as pushed (format version 2): every blob under its digest, every
manifest, index or artifact byte for byte, so digests, signatures and referrers stay valid and
`docker pull` of a pushed digest gets what was pushed. A blob that is a layer (gzip, zstd or tar)
is also decoded, while it arrives (within a DecodeLimit: bombs are kept as pushed, not decoded), and
stored by diff_id as lz4 (spool_layer, as for `docker save`) and recorded in pushed/<alg>/<hex>; an
image manifest whose layers all decoded to its config's diff_ids then also gets a dogestry manifest,
so dogestry_pull loads it the thin way and later dogestry pushes reuse its layers. Manifest, referrer
record, then tag are written last, under a lease (the engine's protocol against a concurrent prune).

A client does not send a blob the registry vouches for (HEAD, mount), so StoredBlobs vouches only for
what is still stored as it was pushed; a damaged copy found where a blob, manifest or record is to be
stored is quarantined and replaced.

No HTTP here: RegistryApi routes requests to this class; ApiError carries the spec's error codes.

May import _errors, _format, _storage, _codecs, _ops (leases, reuse checks) and the rest of _registry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .._codecs import SpooledLayer, spool_layer
from .._errors import BlobCorruptError, DogestryError, FormatError, RemoteNotFoundError
from .._format.keys import ENCODINGS, blob_key, digest_of, manifest_key, object_key, oci_manifest_key, parse_digest, pushed_key, sha256_hex, split_digest
from .._format.manifest import LayerEntry, Manifest, PushRecord, diff_ids_of_config
from .._format.oci import Descriptor, OciManifest
from .._format.reference import ImageRef
from .._ops.leases import drop_lease, write_lease
from .._ops.reuse import damaged_reused_layers
from .._storage.repository import Repository
from .routes import ApiError
from .uploads import CHUNK, MAX_DECODERS, UploadSessions, _Upload


MAX_MANIFEST = 4 << 20          # the spec's suggested limit for a manifest body


SMALL_BLOB = 1 << 20            # stored blobs up to this size are hashed whenever the registry vouches for them


class StoredBlobs:
    """Whether a blob stored as pushed is still what it was stored as. HEAD, mounts and the check of the blobs a
    manifest names rely on it, and a client does not send what they vouch for, so they must never vouch for a
    damaged copy: a small blob is hashed (a config, cheaply, every time), a larger one must have the size its
    push record gives (a truncated or appended-to copy fails; a flipped byte inside is dogestry verify's).
    A large blob without a record (stored by an earlier release) is not vouched for: the client sends it once
    more, and that upload writes its record."""

    MEMO = 10000        # records kept in memory (they only change when a blob is stored again)

    def __init__(self, repo: Repository):
        self.repo = repo
        self._records: Dict[str, PushRecord] = {}
        self._lock = threading.Lock()

    def record(self, digest: str) -> Optional[PushRecord]:
        with self._lock:
            record = self._records.get(digest)
        if record is None:
            key = pushed_key(digest)
            try:
                record = PushRecord.from_bytes(self.repo.remote.get(key), "%s on %s" % (key, self.repo.url))
            except (RemoteNotFoundError, FormatError):
                return None
            self.remember(digest, record)
        return record

    def remember(self, digest: str, record: PushRecord) -> None:
        with self._lock:
            if len(self._records) >= self.MEMO:
                self._records.clear()
            self._records[digest] = record

    def vouches(self, digest: str, stored_size: int) -> bool:
        """Whether the blob stored as pushed under `digest`, of `stored_size` bytes, is what was pushed."""
        if stored_size <= SMALL_BLOB:
            return self.hashes_to(digest)
        record = self.record(digest)
        return record is not None and record.blob_size == stored_size

    def hashes_to(self, digest: str) -> bool:
        try:
            return digest_of(split_digest(digest)[0], self.repo.remote.get(object_key(digest))) == digest
        except (RemoteNotFoundError, FormatError):
            return False


class RegistryWriter(UploadSessions):
    """Uploads in progress, blobs waiting for their manifest, and what pushed blobs were stored as."""

    def __init__(self, repo: Repository, spool_dir: Optional[str] = None, max_blob: int = 64 << 30,
                 compression: str = "lz4", clock=time.monotonic, spool_budget: Optional[int] = None):
        """`max_blob` bounds a blob as pushed and its decoded copy; `spool_budget` the bytes all uploads in
        progress may hold in the spool (default: half the free space of its filesystem at start)."""
        self.repo = repo
        self.max_blob = max_blob
        self.compression = compression
        self.clock = clock
        # Finished blobs go into a directory remote by link(), which works within one filesystem and
        # mount only: spool in its staging directory unless told otherwise (None: S3, the temp dir).
        self.spool = tempfile.mkdtemp(prefix="dogestry-uploads-", dir=spool_dir or repo.remote.staging_dir())
        if spool_budget is None:
            stat = os.statvfs(self.spool)
            spool_budget = max(stat.f_bavail * stat.f_frsize // 2, CHUNK)
        self.spool_budget = spool_budget
        self.blobs = StoredBlobs(repo)
        self._uploads: Dict[str, _Upload] = {}
        self._held = 0                                      # bytes the uploads in progress hold in the spool
        self._leases: Dict[str, Tuple[str, float]] = {}     # digest of a pushed blob -> (lease key, when) until a manifest
        self._decoders = threading.Semaphore(MAX_DECODERS)
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)

    # -- uploads ------------------------------------------------------------------------------

    # -- finished blobs -------------------------------------------------------------------------

    def _decode(self, digest: str, path: str) -> Optional[SpooledLayer]:
        """A complete blob that looks like a layer, decoded into the spool (None if it is not one after all)."""
        try:
            with open(path, "rb") as f:
                return spool_layer(f, "pushed blob " + digest, self.compression, self.spool, self._decode_limit)
        except OSError as exc:
            raise ApiError(507, "UNKNOWN", "spooling %s failed: %s" % (digest, exc.strerror or exc))
        except Exception:  # noqa: BLE001  zlib, zstd or tar errors, a bomb: not decoded, kept as pushed only
            return None

    def _store(self, digest: str, path: str, size: int, spooled: Optional[SpooledLayer]) -> None:
        """Store a verified blob as pushed, under a lease until a manifest names it; a layer (`spooled`,
        its decoded copy) is also stored by its diff_id. A damaged copy already stored under either key is
        quarantined first (the create-only write would keep it). The caller removes both spool files."""
        _algorithm, hexdigest = split_digest(digest)
        self.repo.check(create=True)
        lease = write_lease(self.repo, [_lease_oid(digest)] + ([spooled.oid] if spooled else []))
        with self._lock:
            old = self._leases.pop(digest, None)
            self._leases[digest] = (lease, self.clock())
        if old:
            drop_lease(self.repo, old[0])
        layer = None
        if spooled is not None:     # a raw tar is its own decoded copy
            layer = LayerEntry(hexdigest, size, "none", size) if spooled.oid == hexdigest else self._store_decoded(spooled)
        self._quarantine_damaged_blob(digest, size)
        self.repo.remote.put_file(object_key(digest), path)
        if layer is not None or size > SMALL_BLOB:     # smaller blobs are hashed whenever they are vouched for
            record = PushRecord(size, layer)
            self.repo.remote.put(pushed_key(digest), record.to_bytes(), overwrite=True)
            self.blobs.remember(digest, record)

    def _store_decoded(self, spooled: SpooledLayer) -> LayerEntry:
        """Store a decoded layer, or reuse the copy an earlier push stored (perhaps encoded by another lz4) unless
        the checks a push makes before reusing a layer call it damaged; returns the layer as stored."""
        key = blob_key(spooled.oid, spooled.encoding)
        for _attempt in range(2):
            found = self.repo.remote.stat([key]).get(key)
            if found is not None:
                stored = LayerEntry(spooled.oid, spooled.size, spooled.encoding, found.size)
                if not damaged_reused_layers(self.repo, {spooled.oid: stored}, {spooled.oid: spooled.size}):
                    return stored
                self._quarantine(key)
            if self.repo.remote.put_file(key, spooled.path):
                return LayerEntry(spooled.oid, spooled.size, spooled.encoding, spooled.stored_size)
        raise DogestryError("%s on %s was stored damaged again while this push replaced it" % (key, self.repo.url))

    def _quarantine_damaged_blob(self, digest: str, size: int) -> None:
        """A blob already stored under `digest` that is not the `size` bytes just verified (or, small, does not
        hash to its digest) is damaged: moved aside, so that the good copy is stored."""
        key = object_key(digest)
        found = self.repo.remote.stat([key]).get(key)
        if found is not None and (found.size != size or (size <= SMALL_BLOB and not self.blobs.hashes_to(digest))):
            self._quarantine(key)

    def _quarantine(self, key: str) -> None:
        try:
            self.repo.quarantine(key)
        except RemoteNotFoundError:
            pass        # moved or replaced meanwhile

    def verbatim_size(self, digest: str) -> Optional[Tuple[int, str]]:
        """(size, key) of a blob stored as pushed that is still what was pushed; None if absent or damaged."""
        key = object_key(digest)
        found = self.repo.remote.stat([key]).get(key)
        return (found.size, key) if found is not None and self.blobs.vouches(digest, found.size) else None

    def pushed_layer(self, digest: str) -> Optional[PushRecord]:
        """What a pushed layer blob decoded to, if the remote still holds that layer whole (records are hints)."""
        record = self.blobs.record(digest)
        if record is None or record.layer is None:
            return None
        found = self.repo.remote.stat([record.layer.key]).get(record.layer.key)
        if found is None or found.size != record.layer.stored_size:
            return None
        return record

    # -- manifests ------------------------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, content_type: Optional[str], body,
                     manifest_exists=lambda digest: False,
                     blob_size: Optional[Callable[[str], Optional[Tuple[int, str]]]] = None) -> Tuple[str, OciManifest]:
        """Store a manifest, index or artifact pushed under name:reference (a tag, or its digest) as pushed,
        once everything it names is stored; returns (its digest, the parsed manifest).

        `manifest_exists(digest)`: whether the registry serves a manifest an index names that is not
        stored verbatim (an image dogestry_push stored, shown as Manifest.oci_bytes()).
        `blob_size(digest)`: (size, key) of a stored blob the registry vouches for, as HEAD answers
        (default: blobs stored as pushed, verbatim_size); each blob must have the size the manifest gives.

        What it names and reuses is leased before the first write and checked again after any running
        prune (_ops/leases.py's write_lease): a prune never takes a blob between this check and the tag."""
        data = body.read(MAX_MANIFEST + 1) if body is not None else b""
        if len(data) > MAX_MANIFEST:
            raise ApiError(413, "SIZE_INVALID", "manifest larger than %d bytes" % MAX_MANIFEST)
        algorithm = self.parse_digest(reference)[0] if ":" in reference else "sha256"
        digest = digest_of(algorithm, data)
        if ":" in reference and digest != reference:
            raise ApiError(400, "DIGEST_INVALID", "the manifest's bytes hash to %s, not %s" % (digest, reference[:150]))
        try:
            manifest = OciManifest.parse(data, content_type, "the manifest")
        except FormatError as exc:
            raise ApiError(400, "MANIFEST_INVALID", str(exc))
        expect = self._check_blobs(manifest, blob_size or self.verbatim_size)
        for child in manifest.manifests:
            if self._manifest_stored(child.digest):
                expect.append(oci_manifest_key(child.digest))
            elif not manifest_exists(child.digest):
                raise ApiError(400, "MANIFEST_UNKNOWN", "manifest %s, which the index names, was not pushed first"
                               % child.digest)
        oids = [_lease_oid(d.digest) for d in manifest.required()] + [d.digest for d in manifest.manifests] + [digest]
        twin = self._decoded_twin(manifest)
        if twin is not None:
            oids += [sha256_hex(twin.to_bytes()), twin.config_oid] + [layer.oid for layer in twin.layers]
            expect += [twin.config_key] + [layer.key for layer in twin.layers]
        lease = write_lease(self.repo, oids, expect)
        try:
            self.repo.write_oci_manifest(digest, manifest)
            if twin is not None:
                self.repo.put_exact(manifest_key(sha256_hex(twin.to_bytes())), twin.to_bytes())
                self.repo.write_manifest(twin)
            if ":" not in reference:
                self.repo.write_oci_tag(ImageRef(name, reference), Descriptor(manifest.media_type, digest, len(data)))
        finally:
            drop_lease(self.repo, lease)
        self._release([d.digest for d in manifest.required()])
        return digest, manifest

    def _check_blobs(self, manifest: OciManifest, blob_size: Callable[[str], Optional[Tuple[int, str]]]) -> List[str]:
        """The keys of the blobs a manifest needs, each vouched for with the size the manifest gives (400 if not)."""
        keys = []
        for descriptor in manifest.required():
            vouched = blob_size(descriptor.digest)
            if vouched is None:
                damaged = object_key(descriptor.digest) in self.repo.remote.stat([object_key(descriptor.digest)])
                raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "%s %s before the manifest naming it" % (
                    descriptor.digest, "is stored damaged (not the bytes pushed): push it again" if damaged
                    else "was not pushed"))
            if vouched[0] != descriptor.size:
                raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "blob %s is stored with %d bytes, the manifest says %d"
                               % (descriptor.digest, vouched[0], descriptor.size))
            keys.append(vouched[1])
        return keys

    def _manifest_stored(self, digest: str) -> bool:
        """A manifest an index names is stored whole (a damaged copy does not count: the client pushes it again)."""
        try:
            self.repo.read_oci_manifest(digest)
            return True
        except (RemoteNotFoundError, BlobCorruptError, FormatError):
            return False

    def _decoded_twin(self, manifest: OciManifest) -> Optional[Manifest]:
        """For an image whose layers were all decoded to its config's diff_ids: its dogestry manifest (the thin
        path dogestry_pull and dogestry_push share), to be written with it; else None. Writes nothing."""
        if not manifest.is_image or not manifest.config.digest.startswith("sha256:"):
            return None
        config_hex = parse_digest(manifest.config.digest)
        try:
            config = self.repo.remote.get(blob_key(config_hex))
            if digest_of("sha256", config) != manifest.config.digest:
                return None
            diff_ids = diff_ids_of_config(config, manifest.config.digest)
        except (DogestryError, FormatError):
            return None
        if len(diff_ids) != len(manifest.layers):
            return None
        layers = []
        for descriptor, diff_id in zip(manifest.layers, diff_ids):
            layer = self._decoded_layer(descriptor, diff_id)
            if layer is None:
                return None
            layers.append(layer)
        return Manifest(config_hex, len(config), tuple(layers))

    def _decoded_layer(self, descriptor: Descriptor, diff_id: str) -> Optional[LayerEntry]:
        if not descriptor.digest.startswith("sha256:"):
            return None
        pushed = self.pushed_layer(descriptor.digest)
        if pushed is not None:
            return pushed.layer if pushed.layer.oid == diff_id else None
        if parse_digest(descriptor.digest) == diff_id:     # an uncompressed layer the remote already has (pulled from here)
            found = self.repo.remote.stat([blob_key(diff_id, encoding) for encoding in ENCODINGS])
            for encoding in ("lz4", "none"):
                if blob_key(diff_id, encoding) in found:
                    return LayerEntry(diff_id, descriptor.size, encoding, found[blob_key(diff_id, encoding)].size)
        return None

    def _release(self, digests) -> None:
        """A manifest now references these: drop the leases that kept them until it did."""
        with self._lock:
            leases = [self._leases.pop(d)[0] for d in digests if d in self._leases]
        for lease in leases:
            drop_lease(self.repo, lease)


def _lease_oid(digest: str) -> str:
    """How a lease names a blob: sha256 by its hex (what every release's prune reads), others by digest."""
    algorithm, hexdigest = split_digest(digest)
    return hexdigest if algorithm == "sha256" else digest
