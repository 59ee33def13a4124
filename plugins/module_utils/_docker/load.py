# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Writing a `docker load` stream from stored layers, each verified against its digest on the way
(manifest.json last, so Docker loads nothing unverified).

May import _format, _codecs and _storage.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

from .._codecs import CHUNK, decoder
from .._errors import BlobCorruptError
from .._format.keys import sha256_hex
from .._format.reference import full_name


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
