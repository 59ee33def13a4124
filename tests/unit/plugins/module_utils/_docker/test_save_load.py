import gzip
import io
import json
import os
import tarfile

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _codecs as _decode
from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import decoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import DecodeLimit, spool_layer
from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.load import LoadLayer, load_stream
from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.save import read_save_stream
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError, FormatError
from ansible_collections.dogestry.dogestry.tests.unit.plugins.test_support.archive_stubbing import (
    chunks, layer_tar, save_archive, sha,
)

BIG = os.urandom(1 << 21)      # bigger than SMALL_MEMBER, so it streams through the spool path
LAYERS = [layer_tar({"/bin/sh": b"#!" * 10}), layer_tar({"/big": BIG}), layer_tar({"/etc/x": b"x"})]
OIDS = [sha(layer) for layer in LAYERS]


def read(archive, wanted, tmp_path, encoding="lz4"):
    spooled = []
    saved = read_save_stream(chunks(archive), set(wanted), set(OIDS), encoding, str(tmp_path), spooled.append)
    return saved, spooled


def decode_file(path, encoding):
    with open(path, "rb") as handle:
        dec = decoder(encoding, path)
        return b"".join(dec.decode(handle.read())) + dec.finish()


@pytest.mark.parametrize("layout, gzip_layers", [("classic", False), ("oci", False), ("oci", True)])
@pytest.mark.parametrize("encoding", ["lz4", "none"])
def test_reads_every_layout_into_verified_spools(tmp_path, layout, gzip_layers, encoding):
    archive, config = save_archive(LAYERS, layout, gzip_layers=gzip_layers)
    saved, spooled = read(archive, OIDS[1:], tmp_path, encoding)
    assert saved.config_bytes == config and saved.config_oid == sha(config)
    assert saved.diff_ids == OIDS
    assert saved.repo_tags == ["app:1"]
    assert saved.sizes == {oid: len(layer) for oid, layer in zip(OIDS, LAYERS)}
    assert sorted(layer.oid for layer in spooled) == sorted(OIDS[1:])
    for layer in spooled:
        assert decode_file(layer.path, encoding) == LAYERS[OIDS.index(layer.oid)]
        assert layer.stored_size == os.path.getsize(layer.path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(layer.path) for layer in spooled)


@pytest.mark.parametrize("layout", ["classic", "oci"])
def test_with_nothing_wanted_layers_are_sized_not_spooled(tmp_path, layout):
    archive = save_archive(LAYERS, layout)[0]
    saved, spooled = read(archive, [], tmp_path)
    assert spooled == [] and os.listdir(tmp_path) == []
    assert saved.diff_ids == OIDS
    assert saved.sizes == {oid: len(layer) for oid, layer in zip(OIDS, LAYERS)}


def test_lz4_shrinks_compressible_layers(tmp_path):
    text = layer_tar({"/t": b"dogestry " * 500000})
    archive = save_archive([text])[0]
    spooled = read_save_stream(chunks(archive), {sha(text)}, {sha(text)}, "lz4", str(tmp_path), lambda l: None)
    assert spooled.layers[sha(text)].stored_size < len(text) / 20


def test_classic_symlinked_duplicate_layer(tmp_path):
    layers = [LAYERS[0], LAYERS[1], LAYERS[0]]
    archive = save_archive(layers, "classic")[0]
    saved = read_save_stream(chunks(archive), {OIDS[0]}, set(OIDS), "none", str(tmp_path), lambda l: None)
    assert saved.diff_ids == [OIDS[0], OIDS[1], OIDS[0]]
    assert list(saved.layers) == [OIDS[0]]


def test_a_layer_that_does_not_hash_to_its_diff_id_is_refused(tmp_path):
    archive = save_archive(LAYERS, "classic")[0]
    tampered = archive.replace(BIG[:4096], bytes(4096), 1)
    with pytest.raises(BlobCorruptError):
        read(tampered, OIDS, tmp_path)
    assert os.listdir(tmp_path) == []


def test_archive_without_manifest_is_a_format_error(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("repositories")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(FormatError, match="manifest.json"):
        read(buffer.getvalue(), [], tmp_path)


def _stored(data):
    return lambda: io.BytesIO(data)


def test_load_stream_is_a_docker_load_archive_with_only_missing_layers_and_manifest_last():
    config = b'{"rootfs": {}}'
    layers = [LoadLayer(OIDS[0], len(LAYERS[0]), "none", None),
              LoadLayer(OIDS[1], len(LAYERS[1]), "none", _stored(LAYERS[1]), "layer 1")]
    archive = b"".join(load_stream(sha(config), config, ["app:1"], layers))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        assert names == ["%s/layer.tar" % OIDS[1], "%s.json" % sha(config), "manifest.json"]
        assert tar.extractfile(names[0]).read() == LAYERS[1]
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert manifest == [{"Config": "%s.json" % sha(config), "RepoTags": ["app:1"],
                         "Layers": ["%s/layer.tar" % oid for oid in OIDS[:2]]}]


@pytest.mark.parametrize("stored, match", [
    (LAYERS[1][:-1] + b"!", "hashes to"),
    (LAYERS[1][:-512], "bytes instead of"),
    (LAYERS[1] + b"x", "more than"),
])
def test_load_stream_raises_before_manifest_on_any_mismatch(stored, match):
    layer = LoadLayer(OIDS[1], len(LAYERS[1]), "none", _stored(stored), "layer 1")
    sent = []
    with pytest.raises(BlobCorruptError, match=match):
        for chunk in load_stream("c" * 64, b"{}", [], [layer]):
            sent.append(chunk)
    assert b"manifest.json" not in b"".join(sent)


@pytest.fixture(params=["zlib-ng", "zlib"])
def inflater(request, monkeypatch):
    """Gzip is decoded by zlib-ng when it is installed, else by the standard library: both must behave alike."""
    if request.param == "zlib-ng" and not _decode.HAS_ZLIB_NG:
        pytest.fail("zlib-ng is in requirements.txt: scripts/setup.sh installs it")
    monkeypatch.setattr(_decode, "HAS_ZLIB_NG", request.param == "zlib-ng")


def _gzip_cli(*parts):
    """Real bytes of the gzip tool: each part compressed on its own, the outputs concatenated (as pigz -i does)."""
    import subprocess
    return b"".join(subprocess.run(["gzip", "-c", "-n"], input=part, stdout=subprocess.PIPE, check=True).stdout
                    for part in parts)


@pytest.mark.parametrize("split", [[], [512], [512, 1 << 20, (1 << 20) + 7]])
def test_every_member_of_a_multi_member_gzip_layer_is_decoded(tmp_path, inflater, split):
    layer = LAYERS[1]
    bounds = [0] + split + [len(layer)]
    blob = _gzip_cli(*[layer[a:b] for a, b in zip(bounds, bounds[1:])])
    spooled = spool_layer(io.BytesIO(blob), "layer", "none", str(tmp_path))
    assert spooled.oid == sha(layer) and spooled.size == len(layer)


@pytest.mark.parametrize("tail, match", [(b"not gzip at all", "after the end of its gzip"),
                                         (b"\x1f\x8b\x08", "truncated")])
def test_what_follows_a_gzip_member_must_be_another_whole_member(tmp_path, inflater, tail, match):
    with pytest.raises(FormatError, match=match):
        spool_layer(io.BytesIO(_gzip_cli(LAYERS[0]) + tail), "layer", "none", str(tmp_path))
    assert os.listdir(tmp_path) == []


class _CountingReader:
    def __init__(self, data):
        self._reader, self.consumed = io.BytesIO(data), 0

    def read(self, size=-1):
        data = self._reader.read(size)
        self.consumed += len(data)
        return data


def _bomb(kind):
    """About 8 MiB that decode to 8 GiB (gzip) or far more (zstd): members or frames of 64 MiB of zeros."""
    zeros = b"\0" * (64 << 20)
    if kind == "gzip":
        member = gzip.compress(zeros, compresslevel=9, mtime=0)
    else:
        import zstandard
        member = zstandard.ZstdCompressor(level=19).compress(zeros)
    return member * ((8 << 20) // len(member))


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_bomb_is_abandoned_early_under_a_decode_limit(tmp_path, inflater, kind):
    bomb = _bomb(kind)
    reader = _CountingReader(bomb)
    with pytest.raises(FormatError, match="decodes to more than"):
        spool_layer(reader, "pushed blob", "lz4", str(tmp_path), DecodeLimit(1 << 40))
    assert reader.consumed < len(bomb) // 4, "read %d of the bomb's %d bytes" % (reader.consumed, len(bomb))
    assert os.listdir(tmp_path) == []


def test_a_decode_limit_caps_the_decoded_size(tmp_path, inflater):
    data = os.urandom(3 << 20)
    with pytest.raises(FormatError, match="decodes to more than 2097152 bytes"):
        spool_layer(io.BytesIO(gzip.compress(data, compresslevel=1)), "pushed blob", "none", str(tmp_path),
                    DecodeLimit(2 << 20))
    spooled = spool_layer(io.BytesIO(gzip.compress(data, compresslevel=1)), "pushed blob", "none", str(tmp_path),
                          DecodeLimit(4 << 20))
    assert spooled.size == len(data)
