# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Reading `docker save`'s stream: each layer hashed, encoded and spooled as it passes, the config and
manifest.json kept.

May import _format, _codecs and _storage.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Set

from .._codecs import CHUNK, SpooledLayer, _GZIP_MAGIC, _Prefixed, _ZSTD_MAGIC, spool_layer
from .._errors import BlobCorruptError, FormatError
from .._format.keys import sha256_hex
from .._format.manifest import diff_ids_of_config
from .._storage.base import unlink_quietly
from .load import _BytesReader


SMALL_MEMBER = 1 << 20      # members up to this size (JSON, tiny layers) are kept in memory


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
