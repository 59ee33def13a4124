# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Streaming encoders/decoders for stored layers: 'none' or one lz4 frame (self-describing, checksummed)."""

from __future__ import annotations

import traceback
from typing import Iterator

try:
    import lz4.frame as lz4_frame
    HAS_LZ4 = True
    LZ4_IMPORT_ERROR = None
except ImportError:
    HAS_LZ4 = False
    LZ4_IMPORT_ERROR = traceback.format_exc()

from ._errors import BlobCorruptError, DogestryError


DECODE_STEP = 1 << 20     # most bytes a decoder hands out at once: an lz4 bomb cannot balloon memory


LZ4_MAGIC = b"\x04\x22\x4d\x18"
LZ4_ENDS = 8            # bytes to read at each end of a stored frame for lz4_frame_ends_intact()


def lz4_frame_ends_intact(head: bytes, tail: bytes) -> bool:
    """Whether the first and last LZ4_ENDS bytes of a stored blob can be those of one whole lz4 frame.

    Cheap (two small reads) where decoding the whole blob is not: an overwritten, appended-to or
    truncated blob fails it, except a cut within the frame's last dozen bytes (a layer's tar ends in
    zeros, which lz4 leaves as trailing literals) and a same-size flip inside (pulls and
    dogestry_verify decode and hash every byte).
    """
    if len(head) < 5 or head[:4] != LZ4_MAGIC or head[4] >> 6 != 1 or len(tail) < 8:
        return False
    content_checksum = head[4] & 0x04
    end_mark = tail[-8:-4] if content_checksum else tail[-4:]
    return end_mark == b"\0\0\0\0"


class _Identity:
    def update(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> bytes:
        return b""


class _Lz4Encoder:
    def __init__(self):
        # Content checksum off: the sha256 of the decoded bytes is the check that matters.
        self._compressor = lz4_frame.LZ4FrameCompressor(block_size=lz4_frame.BLOCKSIZE_MAX4MB, auto_flush=False)
        self._header = self._compressor.begin()

    def update(self, data: bytes) -> bytes:
        out = self._compressor.compress(data)
        if self._header:
            out, self._header = self._header + out, b""
        return out

    def finish(self) -> bytes:
        out = self._header + self._compressor.flush()
        self._header = b""
        return out


class _Lz4Decoder:
    def __init__(self, what: str):
        self._decompressor = lz4_frame.LZ4FrameDecompressor()
        self._what = what

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of `data`, in pieces of at most DECODE_STEP: one input chunk of a
        hostile frame can expand 255-fold, and no piece is bigger than the step."""
        if self._decompressor.eof:
            if data:
                raise BlobCorruptError("%s has data after the end of its lz4 frame" % self._what)
            return
        while True:
            try:
                out = self._decompressor.decompress(data, max_length=DECODE_STEP)
            except RuntimeError as exc:
                raise BlobCorruptError("%s is not a valid lz4 frame (%s)" % (self._what, exc))
            data = b""
            if self._decompressor.eof and self._decompressor.unused_data:
                raise BlobCorruptError("%s has data after the end of its lz4 frame" % self._what)
            if out:
                yield out
            if self._decompressor.eof or self._decompressor.needs_input:
                return

    def finish(self) -> bytes:
        if not self._decompressor.eof:
            raise BlobCorruptError("%s ends in the middle of its lz4 frame (truncated)" % self._what)
        return b""


def _require_lz4():
    if not HAS_LZ4:
        raise DogestryError("the Python package 'lz4' is required for lz4-encoded layers: pip install lz4")


def encoder(encoding: str):
    """An object with update(bytes)->bytes and finish()->bytes."""
    if encoding == "none":
        return _Identity()
    _require_lz4()
    return _Lz4Encoder()


def decoder(encoding: str, what: str):
    """An object with decode(bytes)->Iterator[bytes] (bounded pieces) and finish()->bytes."""
    if encoding == "none":
        return _Identity()
    _require_lz4()
    return _Lz4Decoder(what)
