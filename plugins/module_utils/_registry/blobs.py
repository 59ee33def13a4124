# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Serving blobs (GET/HEAD /v2/NAME/blobs/DIGEST): stored layers decoded and verified on the way,
ranges, pushed blobs verbatim, through the blob cache when there is one.

May import _errors, _format, _storage, _codecs, _docker, _metrics and the rest of _registry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple
from time import monotonic as _monotonic

from .._codecs import CHUNK, decoder
from .._docker.load import LoadLayer, verified_chunks
from .._errors import BlobCorruptError, FormatError, RemoteError, RemoteNotFoundError
from .._format.keys import blob_key, object_key, sha256_hex, split_digest
from .._format.manifest import LayerEntry, Manifest
from .._ops.reuse import read_verified
from .._storage.base import Remote
from .._storage.blob_cache import Uncached, skipped
from .routes import ApiError, Response
from .writer import SMALL_BLOB, StoredBlobs


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
PIECE = 256 << 10           # bytes per write to a client
RANGE_PIECE = 4 << 20       # bytes per ranged read of a stored object


def _at_most(digits: str, limit: int) -> int:
    """int(digits), capped at `limit` (Python's int() refuses strings of over 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return limit if len(digits) > len(str(limit)) else min(int(digits), limit)


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """'bytes=a-b' -> (start, end inclusive) within size; None without a header; ApiError 416 if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    bad = ApiError(416, "BLOB_UNKNOWN", "range %r not satisfiable for %d bytes" % (header[:100], size),
                   [("Content-Range", "bytes */%d" % size)])
    if not match or (not match.group(1) and not match.group(2)):
        raise bad
    first, last = match.group(1), match.group(2)
    if not first:                       # suffix range: the last N bytes
        count = _at_most(last, size)
        if count == 0 or size == 0:
            raise bad
        return size - count, size - 1
    start = _at_most(first, size)
    end = _at_most(last, size - 1) if last else size - 1
    if start >= size or start > end:
        raise bad
    return start, end


def _held_back(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield every chunk but the last until the source has finished without raising."""
    pending = None
    for chunk in chunks:
        if pending is not None:
            yield pending
        pending = chunk
    if pending is not None:
        yield pending


def _pieces(chunks: Iterator[bytes], size: int = PIECE) -> Iterator[bytes]:
    """Split decoded blocks (lz4 blocks are up to 4 MiB) so a thread holds back little."""
    for chunk in chunks:
        if len(chunk) <= size:
            yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(chunk), size):
            yield bytes(view[start:start + size])


def _hashed(chunks: Iterator[bytes], digest: str, what: str) -> Iterator[bytes]:
    """Pass a stored blob through, raising BlobCorruptError at the end if it is not `digest`."""
    algorithm, expected = split_digest(digest)
    hasher = hashlib.new(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk
    if hasher.hexdigest() != expected:
        raise BlobCorruptError("%s is corrupt: its content hashes to %s:%s" % (what, algorithm, hasher.hexdigest()))


def _read_all(reader, size: int = PIECE) -> Iterator[bytes]:
    return iter(lambda: reader.read(size), b"")


def _then(chunks: Iterator[bytes], action) -> Iterator[bytes]:
    yield from chunks
    action()


def _exactly(reader, count: int, what: str) -> Iterator[bytes]:
    """The next `count` bytes of `reader`; BlobCorruptError if it ends before."""
    while count:
        data = reader.read(min(count, PIECE))
        if not data:
            raise BlobCorruptError("%s ends %d bytes before its recorded size" % (what, count))
        count -= len(data)
        yield data


def _decoded_range(stored, layer: LoadLayer, start: int, end: int) -> Iterator[bytes]:
    """Bytes start..end of a stored layer's decoded content, decoding no further than `end`."""
    dec = decoder(layer.encoding, layer.what)
    offset = 0
    while offset <= end:
        chunk = stored.read(CHUNK)
        for data in dec.decode(chunk) if chunk else (dec.finish(),):
            first, last = max(start - offset, 0), min(end + 1 - offset, len(data))
            if first < last:
                yield data[first:last]
            offset += len(data)
            if offset > end:
                return
        if not chunk:
            raise BlobCorruptError("%s is corrupt: it decodes to %d bytes, not %d" % (layer.what, offset, layer.size))


@dataclass(frozen=True)
class BlobInfo:
    oid: str
    size: int
    encoding: Optional[str]     # None: the image config (stored raw, read whole)
    manifest: Manifest


class BlobReads:
    """GET/HEAD of blobs, a part of RegistryApi (api.py): uses its repo, cache, metrics, writer and what it knows of the remote."""

    def _blob_size(self, digest: str) -> Optional[int]:
        vouched = self._vouched(digest)
        return vouched[0] if vouched is not None else None

    def _vouched(self, digest: str) -> Optional[Tuple[int, str]]:
        """(size, key) of a blob this registry vouches for to a push (a mount, the blobs a manifest names):
        stored as pushed and still what was pushed, or a layer or config of a stored image, stored whole."""
        key = object_key(digest)
        found = self.repo.remote.stat([key]).get(key)
        if found is not None and self._stored_blobs().vouches(digest, found.size):
            return found.size, key
        return self._image_blob(digest)

    def _image_blob(self, digest: str) -> Optional[Tuple[int, str]]:
        """(size, key) of a layer or config of a stored image, stored whole: its manifest tells what it was
        stored as (no push record needed)."""
        info = self._known(self._blobs, digest[7:], _monotonic) if digest.startswith("sha256:") else None
        return (info.size, blob_key(info.oid, info.encoding or "none")) if info is not None and self._stored(info) else None

    def _stored_blobs(self) -> StoredBlobs:
        return self.writer.blobs if self.writer is not None else StoredBlobs(self.repo)

    def _blob(self, ref: str, range_header: Optional[str], head: bool, clock) -> Response:
        digest = self._digest(ref)
        hexdigest = digest.partition(":")[2]
        with self._lock:
            info = self._blobs.get(hexdigest) if digest.startswith("sha256:") else None
        if info is None and self._holds_images():
            key = object_key(digest)
            stored = self.repo.remote.stat([key]).get(key)
            if stored is not None:
                return self._verbatim_blob(digest, key, stored.size, range_header, head)
            if digest.startswith("sha256:"):
                info = self._known(self._blobs, hexdigest, clock)
        if info is None:
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is not on this remote" % ref)
        if head and not self._stored(info):
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is missing from the remote" % ref)
        span = parse_range(range_header, info.size)
        start, end = span if span else (0, info.size - 1)
        length = end - start + 1 if info.size else 0
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)),
                   ("Docker-Content-Digest", "sha256:" + info.oid), ("Accept-Ranges", "bytes"),
                   ("ETag", '"sha256:%s"' % info.oid), ("Docker-Distribution-API-Version", "registry/2.0")]
        status = 200
        if span:
            status = 206
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, info.size)))
        if head:
            return Response(status, headers, b"", 0)
        if info.encoding is None:
            config = self._config(info.manifest)
            body = config[start:end + 1] if span else config
            return Response(status, headers, body, len(body))
        key = blob_key(info.oid, info.encoding)
        layer = LoadLayer(info.oid, info.size, info.encoding, None, "layer sha256:%s on %s" % (info.oid, self.repo.url))
        try:
            if span and self.cache is None:
                # Decoded from the remote up to the range's last byte, unverified: only the whole layer
                # can be checked, and a client that asks for a range checks the whole it assembles.
                stored = Uncached(self.repo.remote.open(key))
            else:
                # Through the cache: a range is cut from a verified entry, or from the one fetch of the
                # blob in flight, its last piece held back until that fetch has verified the whole.
                stored = self._open_stored(key, self._stored_size(info), lambda reader: verified_chunks(reader, layer))
        except RemoteNotFoundError:
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s is missing from the remote" % ref)
        if span:
            chunks = _then(_decoded_range(stored, layer, start, end), stored.verified)
        elif stored.verified_reads:      # the cache checks every byte this reader reads: decode only
            chunks = _then(_decoded_range(stored, layer, 0, info.size - 1), stored.verified)
        else:
            chunks = verified_chunks(stored, layer)
        return Response(status, headers, self._served(stored, _pieces(chunks)), length)

    def _verbatim_blob(self, digest: str, key: str, size: int, range_header: Optional[str], head: bool) -> Response:
        """A blob stored as pushed: streamed from the remote (through the cache), verified as it goes."""
        if head and not (self._stored_blobs().vouches(digest, size)       # a push would skip sending it
                         or (self._image_blob(digest) or (0, None))[1] == key):
            raise ApiError(404, "BLOB_UNKNOWN", "blob %s on this remote is damaged: push it again" % digest)
        span = parse_range(range_header, size)
        start, end = span if span else (0, size - 1)
        length = end - start + 1 if size else 0
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)),
                   ("Docker-Content-Digest", digest), ("Accept-Ranges", "bytes"), ("ETag", '"%s"' % digest),
                   ("Docker-Distribution-API-Version", "registry/2.0")]
        if span:
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        status = 206 if span else 200
        if head:
            return Response(status, headers, b"", 0)

        if span:
            return Response(status, headers, self._served(*self._stored_range(key, start, end)), length)
        what = "blob %s on %s" % (digest, self.repo.url)
        stored = self._open_stored(key, size, lambda reader: _hashed(_read_all(reader), digest, what))
        chunks = _pieces(_read_all(stored))
        chunks = _then(chunks, stored.verified) if stored.verified_reads else _hashed(chunks, digest, what)
        return Response(status, headers, self._served(stored, chunks), length)

    def _open_stored(self, key: str, size: Optional[int], verifier):
        """A reader of a stored object: through the cache (which fetches it once, and keeps it if `verifier`
        passes), or straight from the remote."""
        if self.cache is None:
            return Uncached(self.repo.remote.open(key, size=size))
        return self.cache.open(key, lambda: self.repo.remote.open(key, size=size), verifier)

    def _stored_range(self, key: str, start: int, end: int):
        """(reader, chunks) of bytes start..end of a blob stored as pushed: from its cache entry (verified when
        it was cached) or by ranged reads of the stored object. A range cannot be checked against the
        blob's digest without the rest of the blob; the spec lets a registry serve ranges of what it
        stores, and the client that asks for ranges verifies the whole it puts together, so no more of
        the blob is read than the range."""
        entry = self.cache.open_cached(key) if self.cache is not None else None
        if entry is not None:
            entry.seek(start)
            return entry, _exactly(entry, end - start + 1, key)
        remote = self.repo.remote
        if type(remote).get_range is Remote.get_range:
            # the interface's fallback get_range streams from byte 0 at each call: one stream, skipped to start
            reader = Uncached(remote.open(key))
            return reader, _exactly(skipped(reader, start), end - start + 1, key)
        pieces = (remote.get_range(key, first, min(first + RANGE_PIECE, end + 1) - 1)
                  for first in range(start, end + 1, RANGE_PIECE))
        return None, _pieces(pieces)

    def _stored(self, info: BlobInfo) -> bool:
        """The remote still holds the blob whole. A HEAD answers what a push will rely on (a blob it need not
        send), so it is checked, not taken from memory: a prune may have removed an untagged image's blobs,
        and a damaged copy must be sent again. Its size must be the stored size its manifest gives; a small
        blob is read and verified."""
        key = blob_key(info.oid, info.encoding or "none")
        found = self.repo.remote.stat([key]).get(key)
        expected = info.manifest.config_size if info.encoding is None else self._stored_size(info)
        if found is None or (expected is not None and found.size != expected):
            return False
        if found.size > SMALL_BLOB:
            return True
        layer = LayerEntry(info.oid, info.size, info.encoding or "none", found.size)
        try:
            if info.encoding is None:
                return sha256_hex(self.repo.remote.get(key)) == info.oid
            read_verified(self.repo, layer, "layer sha256:%s on %s" % (info.oid, self.repo.url))
            return True
        except (BlobCorruptError, RemoteNotFoundError, FormatError):
            return False

    @staticmethod
    def _stored_size(info: BlobInfo) -> Optional[int]:
        for layer in info.manifest.layers:
            if layer.oid == info.oid and layer.encoding == info.encoding:
                return layer.stored_size or None
        return None

    def _served(self, stored, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Send what `chunks` yields (read from `stored`), the last piece only once they all were read
        without error: a blob that fails verification (BlobCorruptError) is never received whole."""
        source = getattr(stored, "source", "remote")
        try:
            for piece in _held_back(chunks):
                self.metrics.served_bytes(source, len(piece))
                yield piece
        except BlobCorruptError as exc:
            self.metrics.remote_error(exc)
            if stored is not None:
                stored.discard()        # a cache entry that went bad: the next request refetches
            raise
        except RemoteError as exc:
            self.metrics.remote_error(exc)
            raise
        finally:
            if stored is not None:
                stored.close()

    def _config(self, manifest: Manifest) -> bytes:
        with self._lock:
            config = self._configs.get(manifest.config_oid)
        if config is None:
            with self._single_flight(manifest.config_oid):
                with self._lock:
                    config = self._configs.get(manifest.config_oid)
                if config is None:
                    config = self.repo.read_config(manifest)       # verified before a byte is sent
                    with self._lock:
                        if len(self._configs) >= self.MAX_CONFIGS:
                            self._configs.pop(next(iter(self._configs)))
                        self._configs[manifest.config_oid] = config
        return config
