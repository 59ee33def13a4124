"""The cheap checks a push makes before reusing a large stored lz4 layer: both ends of a whole frame,
read with Remote.get_range (directory: a seek; any other remote: the streaming fallback)."""

import os

import lz4.frame
import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._compress import (
    LZ4_ENDS, encoder, lz4_frame_ends_intact,
)
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
from ansible_collections.dogestry.dogestry.plugins.module_utils._remote import LocalRemote, Remote

DATA = os.urandom(3 << 20) + b"\0" * (1 << 20)


def ends(blob):
    return lz4_frame_ends_intact(blob[:LZ4_ENDS], blob[-LZ4_ENDS:])


@pytest.fixture(scope="module")
def frame():
    enc = encoder("lz4")
    return enc.update(DATA) + enc.finish()


def test_a_whole_frame_passes_with_or_without_a_content_checksum(frame):
    assert ends(frame)
    assert ends(lz4.frame.compress(DATA, content_checksum=True, block_size=lz4.frame.BLOCKSIZE_MAX4MB))


@pytest.mark.parametrize("damage", [
    lambda f: f[:len(f) // 2],                       # truncated in a block
    lambda f: f[:len(f) - 100000],                   # the end lost
    lambda f: f + b"appended",
    lambda f: b"junk!" + f[5:],                      # same size, the header overwritten
    lambda f: b"\0" * len(f),
    lambda f: f[:3],
])
def test_damaged_frames_fail(frame, damage):
    assert not ends(damage(frame))


@pytest.mark.parametrize("reader", ["seek", "fallback"])
def test_get_range_reads_exact_bytes_and_refuses_short_objects(tmp_path, reader):
    remote = LocalRemote(str(tmp_path / "remote"))
    data = os.urandom((1 << 20) + 100)
    remote.put("blobs/x", data)
    get_range = remote.get_range if reader == "seek" else lambda *a: Remote.get_range(remote, *a)
    assert get_range("blobs/x", 0, 7) == data[:8]
    assert get_range("blobs/x", len(data) - 8, len(data) - 1) == data[-8:]
    assert get_range("blobs/x", 1 << 20, (1 << 20) + 9) == data[1 << 20:(1 << 20) + 10]
    with pytest.raises(BlobCorruptError, match="shorter than its manifest says"):
        get_range("blobs/x", len(data) - 4, len(data) + 3)
    with pytest.raises(BlobCorruptError, match="shorter than its manifest says"):
        get_range("blobs/x", len(data) + 10, len(data) + 17)
