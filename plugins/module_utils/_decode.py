# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Decoding pushed layers at the speed Docker sends them.

A layer Docker pushes is gzip; storing it means inflating it, hashing the tar and lz4-compressing it.
Two things keep that up with the sender (benchmarks/README.md has the numbers):

- zlib-ng (the Python package `zlib-ng`, optional) inflates in less than half of zlib's CPU time, with
  zlib's API; without it the standard library's zlib is used.
- read_ahead() runs a producer (the inflate) in a thread of its own, a few chunks ahead of the
  consumer (sha256 and lz4): all three release the GIL, so one layer uses two cores.
"""

from __future__ import annotations

import threading
import zlib
from queue import Empty, Full, Queue
from typing import Iterator

try:
    from zlib_ng import zlib_ng
    HAS_ZLIB_NG = True
    ZLIB_ERRORS = (zlib.error, zlib_ng.error)
except ImportError:
    HAS_ZLIB_NG = False
    ZLIB_ERRORS = (zlib.error,)

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
