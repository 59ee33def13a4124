import os

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._compress import decoder, encoder
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError

DATA = b"dogestry " * 100000 + os.urandom(100000)


def encode(data, encoding, piece=65536):
    enc = encoder(encoding)
    return b"".join(enc.update(data[i:i + piece]) for i in range(0, len(data), piece)) + enc.finish()


def decode(data, encoding, piece=4096):
    dec = decoder(encoding, "blob")
    return b"".join(dec.update(data[i:i + piece]) for i in range(0, len(data), piece)) + dec.finish()


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
