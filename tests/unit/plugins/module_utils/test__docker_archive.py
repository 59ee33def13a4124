import io
import json
import os
import tarfile

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._compress import decoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._docker_archive import (
    LoadLayer, load_stream, read_save_stream,
)
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
