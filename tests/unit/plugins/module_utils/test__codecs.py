import os
import subprocess
import sys

import lz4.frame
import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import LZ4_ENDS, decoder, encoder, lz4_frame_ends_intact
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError

DATA = b"dogestry " * 100000 + os.urandom(100000)


def encode(data, encoding, piece=65536):
    enc = encoder(encoding)
    return b"".join(enc.update(data[i:i + piece]) for i in range(0, len(data), piece)) + enc.finish()


def decode(data, encoding, piece=4096):
    dec = decoder(encoding, "blob")
    return b"".join(b"".join(dec.decode(data[i:i + piece])) for i in range(0, len(data), piece)) + dec.finish()


@pytest.mark.parametrize("encoding", ["lz4", "none"])
def test_round_trip_in_pieces(encoding):
    assert decode(encode(DATA, encoding), encoding) == DATA


def test_lz4_output_is_a_standard_frame():
    import lz4.frame
    assert lz4.frame.decompress(encode(DATA, "lz4")) == DATA


@pytest.mark.parametrize("damage, match", [
    (lambda d: d[:-10], "truncated"),
    (lambda d: d + b"junk", "after the end"),
    (lambda d: b"\x00" * 8 + d[8:], "not a valid lz4 frame"),
])
def test_damaged_frames_are_blob_corrupt_errors(damage, match):
    with pytest.raises(BlobCorruptError, match=match):
        decode(damage(encode(DATA, "lz4")), "lz4")


def test_lz4_decode_hands_out_bounded_pieces():
    from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import DECODE_STEP
    bomb = encode(b"\0" * (64 << 20), "lz4")
    assert len(bomb) < (1 << 20)        # 64 MiB of zeros in well under 1 MiB of frame
    pieces = list(decoder("lz4", "bomb").decode(bomb))
    assert max(len(p) for p in pieces) <= DECODE_STEP and sum(len(p) for p in pieces) == 64 << 20


BOMB_SCRIPT = """
import sys
from ansible_collections.dogestry.dogestry.plugins.module_utils._docker.load import LoadLayer, verified_chunks
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError
try:
    with open(sys.argv[1], "rb") as stored:
        for _ in verified_chunks(stored, LoadLayer("0" * 64, int(sys.argv[2]), "lz4", None, "bomb")):
            pass
except BlobCorruptError as exc:
    print("refused:", exc)
# VmHWM, not ru_maxrss: the latter is inherited across exec from the (big) pytest process
print("peak_rss_kib", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


@pytest.mark.parametrize("declared", [4096, 3 << 30])
def test_lz4_bomb_is_refused_with_memory_bounded(tmp_path, declared):
    """1 GiB of zeros (about 4 MiB stored) declaring 4 KiB or 3 GiB: refused, peak RSS of the reader < 100 MiB.

    Before decoding was bounded per step, one 1 MiB read of such a frame decoded to 255 MiB at once.
    """
    from conftest import COLLECTIONS
    enc, zeros = encoder("lz4"), b"\0" * (64 << 20)
    bomb = tmp_path / "bomb.lz4"
    with open(bomb, "wb") as out:
        for _piece in range(16):
            out.write(enc.update(zeros))
        out.write(enc.finish())
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(bomb), str(declared)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, env=dict(os.environ, PYTHONPATH=COLLECTIONS),
                         check=True).stdout
    peak_kib = int(out.split("peak_rss_kib")[1].split()[0])
    assert "refused: bomb is corrupt" in out, out
    assert peak_kib < 100 * 1024, out
    print("lz4 bomb, declared %d bytes: peak RSS %.1f MiB" % (declared, peak_kib / 1024.0))


# ---- the cheap checks a push makes before reusing a large stored lz4 layer: both ends of a whole frame ----

FRAME_DATA = os.urandom(3 << 20) + b"\0" * (1 << 20)


def ends(blob):
    return lz4_frame_ends_intact(blob[:LZ4_ENDS], blob[-LZ4_ENDS:])


@pytest.fixture(scope="module")
def frame():
    enc = encoder("lz4")
    return enc.update(FRAME_DATA) + enc.finish()


def test_a_whole_frame_passes_with_or_without_a_content_checksum(frame):
    assert ends(frame)
    assert ends(lz4.frame.compress(FRAME_DATA, content_checksum=True, block_size=lz4.frame.BLOCKSIZE_MAX4MB))


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
