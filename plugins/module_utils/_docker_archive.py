# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Reading `docker save` streams and writing `docker load` streams, one pass, bounded memory.

Reads both layouts `docker save` has produced since Docker 1.10:
  * Docker 1.10-24: manifest.json, <config>.json, <v1-id>/layer.tar (uncompressed);
  * Docker >= 25:   an OCI layout (blobs/sha256/<digest>) plus manifest.json;
and the containerd image store's layer blobs as stored (gzip or zstd), decoded on the fly so
that layers are always keyed by their uncompressed sha256 (Docker's diff_id). Writes a classic
`docker load` archive, or an OCI layout for the containerd image store.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Set

try:
    import zstandard
    HAS_ZSTD = True
except ImportError:
    HAS_ZSTD = False

from ._compress import decoder, encoder
from ._decode import gzip_decompressobj, read_ahead
from ._errors import BlobCorruptError, FormatError
from ._format import diff_ids_of_config, full_name, sha256_hex
from ._remote import unlink_quietly

CHUNK = 1 << 20
SMALL_MEMBER = 1 << 20      # members up to this size (JSON, tiny layers) are kept in memory
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _ChunkReader:
    """A file-like read() over an iterator of byte chunks (what the Docker SDK yields)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size
        while wanted != 0:
            available = len(self._buffer) - self._offset
            if not available:
                try:
                    self._buffer, self._offset = next(self._chunks), 0
                except StopIteration:
                    break
                continue
            take = available if wanted < 0 else min(wanted, available)
            parts.append(self._buffer[self._offset:self._offset + take])
            self._offset += take
            if wanted > 0:
                wanted -= take
        return b"".join(parts)


@dataclass
class SpooledLayer:
    """A layer read from `docker save`: hashed, encoded and written to a local spool file."""
    oid: str
    size: int
    encoding: str
    stored_size: int
    path: str


def looks_like_layer(head: bytes) -> bool:
    """The first bytes of a blob are those of a layer _decoded_chunks can decode: gzip, zstd, or a
    tar (ustar magic at offset 257). Anything else (an image config's JSON) is not."""
    return head.startswith((_GZIP_MAGIC, _ZSTD_MAGIC)) or head[257:262] == b"ustar"


@dataclass(frozen=True)
class DecodeLimit:
    """How far an untrusted blob (a registry push) is decoded: at most `max_size` bytes, and at most `ratio`
    times the bytes read so far plus `floor`. A gzip bomb expands a thousandfold, a zstd one far more;
    real layers a few times (a layer of zero-filled files a few hundred times: kept as pushed, not decoded)."""
    max_size: int
    ratio: int = 100
    floor: int = 64 << 20


class _Counted:
    """A reader that counts the bytes taken from it (what a DecodeLimit's ratio is measured against)."""

    def __init__(self, reader):
        self._reader, self.count = reader, 0

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        self.count += len(data)
        return data


def _decoded_chunks(reader, what: str) -> Iterator[bytes]:
    """Raw tar bytes of a layer member, undoing the containerd store's gzip or zstd if present."""
    first = reader.read(CHUNK)
    if first.startswith(_ZSTD_MAGIC):
        if not HAS_ZSTD:
            raise FormatError("%s is zstd-compressed: pip install zstandard to push it" % what)
        with zstandard.ZstdDecompressor().stream_reader(_Prefixed(first, reader), read_across_frames=True) as unzstd:
            chunk = unzstd.read(CHUNK)
            while chunk:
                yield chunk
                chunk = unzstd.read(CHUNK)
        return
    if first.startswith(_GZIP_MAGIC):
        yield from _gunzipped(first, reader, what)
        return
    chunk = first
    while chunk:
        yield chunk
        chunk = reader.read(CHUNK)


def _gunzipped(data: bytes, reader, what: str) -> Iterator[bytes]:
    """Every member of a gzip stream, as Go's reader (Docker's) takes it: pigz -i and eStargz write several.
    Output comes in pieces of at most CHUNK (gzip bombs exist); anything after a member but another
    member is refused, and so is a stream that ends inside one."""
    inflate = gzip_decompressobj()
    while True:
        if not data:
            data = reader.read(CHUNK)
            if not data:
                break
        out = inflate.decompress(data, CHUNK)
        while True:
            if out:
                yield out
            if inflate.eof or not inflate.unconsumed_tail:
                break
            out = inflate.decompress(inflate.unconsumed_tail, CHUNK)
        data = b""
        if inflate.eof:
            data = inflate.unused_data + inflate.unconsumed_tail
            while len(data) < len(_GZIP_MAGIC):
                more = reader.read(CHUNK)
                if not more:
                    break
                data += more
            if not data:
                return
            if not data.startswith(_GZIP_MAGIC):
                raise FormatError("%s has data after the end of its gzip stream" % what)
            inflate = gzip_decompressobj()
    raise FormatError("%s ends in the middle of a gzip member (truncated)" % what)


def spool_layer(reader, what: str, encoding: str, spool_dir: str, limit: Optional[DecodeLimit] = None) -> SpooledLayer:
    """Hash and encode one layer in a single pass into a spool file in `spool_dir`; with a `limit`, a blob
    that decodes past it is a FormatError as soon as it does (a bomb is abandoned, not decoded)."""
    digest = hashlib.sha256()
    enc = encoder(encoding)
    size = stored = 0
    fd = None
    path = os.path.join(spool_dir, "layer-%s.part" % os.urandom(8).hex())
    counted = _Counted(reader)
    try:
        with open(path, "wb") as out:
            fd = out
            for raw in read_ahead(_decoded_chunks(counted, what)):     # inflating on another core
                digest.update(raw)
                size += len(raw)
                ceiling = min(limit.max_size, limit.ratio * counted.count + limit.floor) if limit else size
                if size > ceiling:
                    raise FormatError("%s decodes to more than %d bytes from its first %d: not decoded further"
                                      % (what, ceiling, counted.count))
                data = enc.update(raw)
                stored += len(data)
                out.write(data)
            data = enc.finish()
            stored += len(data)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if fd is not None:
            unlink_quietly(path)
        raise
    return SpooledLayer(digest.hexdigest(), size, encoding, stored, path)


@dataclass
class SavedImage:
    config_oid: str
    config_bytes: bytes
    diff_ids: List[str]
    repo_tags: List[str]
    sizes: Dict[str, int]                                            # every layer's uncompressed size
    layers: Dict[str, SpooledLayer] = field(default_factory=dict)   # wanted oids that were spooled


def read_save_stream(chunks: Iterable[bytes], wanted: Set[str], known: Set[str], encoding: str,
                     spool_dir: str, on_layer: Callable[[SpooledLayer], None]) -> SavedImage:
    """Walk a `docker save` stream of one image.

    `wanted` are the layer oids to spool (missing on the remote), `known` all layer oids of the
    image (from `docker image inspect`): an OCI blob named by a known but unwanted oid is skipped
    without being read twice. `on_layer` is called as soon as a wanted layer is spooled, so the
    caller can upload it while the stream goes on. Unwanted spools are deleted.
    """
    small: Dict[str, bytes] = {}
    links: Dict[str, str] = {}
    by_member: Dict[str, str] = {}          # member path -> layer oid it decoded to
    sizes: Dict[str, int] = {}              # layer oid -> uncompressed size
    unhashed: Dict[str, int] = {}           # member path -> size of plain layer tars read past unhashed
    spooled: Dict[str, SpooledLayer] = {}

    def take(layer: SpooledLayer, member: str):
        by_member[member] = layer.oid
        sizes[layer.oid] = layer.size
        if layer.oid in wanted and layer.oid not in spooled:
            spooled[layer.oid] = layer
            on_layer(layer)
        else:
            unlink_quietly(layer.path)

    try:
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|", bufsize=CHUNK) as tar:
            for member in tar:
                name = posixpath.normpath(member.name)
                if member.issym() or member.islnk():
                    target = member.linkname if member.islnk() else posixpath.join(posixpath.dirname(name), member.linkname)
                    links[name] = posixpath.normpath(target)
                    continue
                if not member.isfile():
                    continue
                named_oid = _oid_from_blob_name(name)
                if named_oid in known:
                    if named_oid in wanted and named_oid not in spooled:
                        take(spool_layer(tar.extractfile(member), name, encoding, spool_dir), name)
                    else:
                        by_member[name] = named_oid
                        sizes[named_oid] = member.size
                elif member.size <= SMALL_MEMBER:
                    small[name] = tar.extractfile(member).read()
                elif name.endswith("/layer.tar") or name.startswith("blobs/"):
                    reader = tar.extractfile(member)
                    head = reader.read(len(_ZSTD_MAGIC))
                    if wanted.issubset(spooled) and not head.startswith((_GZIP_MAGIC, _ZSTD_MAGIC)):
                        # Every wanted layer is spooled: the rest need only their sizes, and
                        # _finish maps them to diff_ids by manifest position, as Docker does.
                        unhashed[name] = member.size
                    else:
                        take(spool_layer(_Prefixed(head, reader), name, encoding, spool_dir), name)
    except tarfile.TarError as exc:
        _discard(spooled)
        raise FormatError("docker save produced an unreadable archive (%s)" % exc)
    except BaseException:
        _discard(spooled)
        raise

    try:
        return _finish(small, links, by_member, sizes, unhashed, spooled, wanted, encoding, spool_dir, take)
    except BaseException:
        _discard(spooled)
        raise


def _finish(small, links, by_member, sizes, unhashed, spooled, wanted, encoding, spool_dir, take) -> SavedImage:
    def resolve(path):
        path = posixpath.normpath(path)
        for _hop in range(16):
            if path not in links:
                return path
            path = links[path]
        raise FormatError("docker save archive has a symlink loop at %s" % path)

    if "manifest.json" not in small:
        raise FormatError("docker save archive has no manifest.json")
    try:
        entries = json.loads(small["manifest.json"])
        entry = entries[0]
        config_path, layer_paths = resolve(entry["Config"]), [resolve(p) for p in entry["Layers"]]
        repo_tags = entry.get("RepoTags") or []
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise FormatError("docker save archive has a malformed manifest.json (%s)" % exc)
    if config_path not in small:
        raise FormatError("docker save archive lacks its image config %s" % config_path)
    config_bytes = small[config_path]
    diff_ids = diff_ids_of_config(config_bytes, config_path)
    if len(diff_ids) != len(layer_paths):
        raise FormatError("docker save archive lists %d layers but its config %d" % (len(layer_paths), len(diff_ids)))
    for index, (path, oid) in enumerate(zip(layer_paths, diff_ids)):
        if path not in by_member and path in unhashed:
            by_member[path] = oid
            sizes.setdefault(oid, unhashed[path])
        if path not in by_member and path in small:
            take(spool_layer(_BytesReader(small[path]), path, encoding, spool_dir), path)
        got = by_member.get(path)
        if got is None:
            raise FormatError("docker save archive lacks layer %d (%s)" % (index, path))
        if got != oid:
            raise BlobCorruptError("docker save layer %s hashes to sha256:%s, its config says sha256:%s" % (path, got, oid))
    missing = wanted.intersection(diff_ids) - set(spooled)
    if missing:
        raise FormatError("docker save archive did not contain layers %s" % ", ".join(sorted(missing)))
    return SavedImage(sha256_hex(config_bytes), config_bytes, diff_ids, list(repo_tags), sizes, spooled)


def _oid_from_blob_name(name: str) -> Optional[str]:
    if name.startswith("blobs/sha256/"):
        return name[len("blobs/sha256/"):]
    return None


def _discard(spooled: Dict[str, SpooledLayer]) -> None:
    for layer in spooled.values():
        unlink_quietly(layer.path)


class _Prefixed:
    """A reader whose first bytes were already read (to sniff the compression)."""

    def __init__(self, head: bytes, reader):
        self._head, self._reader = head, reader

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._reader.read(size)
        if 0 <= size <= len(self._head):
            data, self._head = self._head[:size], self._head[size:]
            return data
        data, self._head = self._head, b""
        return data + self._reader.read(-1 if size < 0 else size - len(data))


class _BytesReader:
    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        data, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return data


# ---- docker load ----------------------------------------------------------------------------

@dataclass
class LoadLayer:
    oid: str
    size: int
    encoding: str
    open_stored: Optional[Callable[[], object]]   # None: the daemon already has it (left out of the archive)
    what: str = ""


def verified_chunks(stored, layer: LoadLayer) -> Iterator[bytes]:
    """Decode a stored layer, yielding bytes only while they can still match; raise on any mismatch."""
    dec = decoder(layer.encoding, layer.what)
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = stored.read(CHUNK)
        for data in dec.decode(chunk) if chunk else (dec.finish(),):   # pieces of at most CHUNK bytes
            if data:
                size += len(data)
                if size > layer.size:
                    raise BlobCorruptError("%s is corrupt: it decodes to more than its %d bytes"
                                           % (layer.what, layer.size))
                digest.update(data)
                yield data
        if not chunk:
            break
    if size != layer.size:
        raise BlobCorruptError("%s is corrupt: %d bytes instead of %d" % (layer.what, size, layer.size))
    if digest.hexdigest() != layer.oid:
        raise BlobCorruptError("%s is corrupt: its content hashes to sha256:%s" % (layer.what, digest.hexdigest()))


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + _padding(len(data))


def _layer_members(layers: List[LoadLayer], name: Callable[[str], str],
                   on_layer_done: Callable[[LoadLayer], None]) -> Iterator[bytes]:
    """The layers to send, each verified while it streams (a mismatch raises mid-archive)."""
    sent = set()
    for layer in layers:
        if layer.open_stored is None or layer.oid in sent:
            continue
        sent.add(layer.oid)
        yield _header(name(layer.oid), layer.size)
        with layer.open_stored() as stored:
            yield from verified_chunks(stored, layer)
        yield _padding(layer.size)
        on_layer_done(layer)


def _docker_manifest(config_name: str, repo_tags: List[str], layer_names: List[str]) -> bytes:
    return json.dumps([{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]).encode("utf-8")


def load_stream(config_oid: str, config_bytes: bytes, repo_tags: List[str], layers: List[LoadLayer],
                on_layer_done: Callable[[LoadLayer], None] = lambda layer: None) -> Iterator[bytes]:
    """A `docker load` archive (classic image store) holding only the layers the daemon lacks.

    Layers stream first, verified as they go; manifest.json comes last, so if any byte fails
    verification the generator raises before the daemon has a loadable archive and the daemon
    registers nothing.
    """
    yield from _layer_members(layers, lambda oid: "%s/layer.tar" % oid, on_layer_done)
    config_name = "%s.json" % config_oid
    yield _member(config_name, config_bytes)
    yield _member("manifest.json", _docker_manifest(config_name, repo_tags,
                                                    ["%s/layer.tar" % layer.oid for layer in layers]))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def oci_load_stream(oci_manifest: bytes, config_oid: str, config_bytes: bytes, repo_tags: List[str],
                    layers: List[LoadLayer], annotation: str,
                    on_layer_done: Callable[[LoadLayer], None] = lambda layer: None) -> Iterator[bytes]:
    """A `docker load` archive for the containerd image store: an OCI layout whose manifest is
    `oci_manifest` (so the image ID is its digest, the same on every host), holding the layer
    blobs the content store lacks, verified as they stream; index.json and manifest.json come last,
    so a corrupt byte aborts the load before the daemon sees an image to register."""
    blob = "blobs/sha256/%s"
    yield from _layer_members(layers, lambda oid: blob % oid, on_layer_done)
    yield _member(blob % config_oid, config_bytes)
    manifest_oid = sha256_hex(oci_manifest)
    yield _member(blob % manifest_oid, oci_manifest)
    yield _member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    annotations = {annotation: "uncompressed"}
    if repo_tags:
        name, _sep, tag = repo_tags[0].rpartition(":")
        annotations.update({"io.containerd.image.name": full_name(name) + ":" + tag,
                            "org.opencontainers.image.ref.name": tag})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "sha256:" + manifest_oid, "size": len(oci_manifest),
                            "annotations": annotations}]}
    yield _member("index.json", json.dumps(index, sort_keys=True).encode("utf-8"))
    yield _member("manifest.json", _docker_manifest(blob % config_oid, repo_tags,
                                                    [blob % layer.oid for layer in layers]))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
