# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Layer codecs: lz4 encoding, gzip and zstd decoding (zlib-ng when present), sniffing what a blob is,
decoding a layer into a spool file with a size limit against decompression bombs.

May import _errors only.
"""

from __future__ import annotations

import hashlib
import os
import threading
import traceback
import zlib
from dataclasses import dataclass
from queue import Empty, Full, Queue
from typing import Iterator, Optional

try:
    import lz4.frame as lz4_frame
    HAS_LZ4 = True
    LZ4_IMPORT_ERROR = None
except ImportError:
    HAS_LZ4 = False
    LZ4_IMPORT_ERROR = traceback.format_exc()
try:
    from zlib_ng import zlib_ng
    HAS_ZLIB_NG = True
    ZLIB_ERRORS = (zlib.error, zlib_ng.error)
except ImportError:
    HAS_ZLIB_NG = False
    ZLIB_ERRORS = (zlib.error,)
try:
    import zstandard
    HAS_ZSTD = True
except ImportError:
    HAS_ZSTD = False

from ._errors import BlobCorruptError, DogestryError, FormatError
from ._storage.base import unlink_quietly


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


READ_AHEAD = 2      # chunks (of up to 1 MiB) a producer may run ahead: memory stays bounded per layer
_WAIT = 0.1         # seconds between looks at whether the other side gave up


def gzip_decompressobj():
    """A zlib decompressobj for a gzip stream: zlib-ng's when installed (same API, faster), else zlib's."""
    return (zlib_ng if HAS_ZLIB_NG else zlib).decompressobj(wbits=31)


class _End:
    def __init__(self, error=None):
        self.error = error


def read_ahead(items: Iterator[bytes], depth: int = READ_AHEAD) -> Iterator[bytes]:
    """The items of `items`, produced by a thread of its own at most `depth` ahead of the consumer.

    An exception in the producer is raised here, in order; a consumer that stops early (an error, a
    generator closed) stops the producer at its next item."""
    queue: Queue = Queue(depth)
    stopped = threading.Event()

    def put(item) -> bool:
        while not stopped.is_set():
            try:
                queue.put(item, timeout=_WAIT)
                return True
            except Full:
                continue
        return False

    def produce():
        end = _End()
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001  handed to the consumer
            end = _End(exc)
        finally:
            if stopped.is_set():
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        put(end)

    producer = threading.Thread(target=produce, name="dogestry-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            try:
                item = queue.get(timeout=_WAIT)
            except Empty:
                if not producer.is_alive() and queue.empty():
                    raise RuntimeError("read-ahead producer ended without a result")
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stopped.set()
        producer.join()


CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


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
