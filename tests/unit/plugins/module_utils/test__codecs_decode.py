"""Layer decoding helpers: the optional zlib-ng inflater and the read-ahead thread."""

import gzip
import os
import random
import threading
import time

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils import _codecs as _decode
from ansible_collections.dogestry.dogestry.plugins.module_utils._codecs import gzip_decompressobj, read_ahead


@pytest.mark.parametrize("fast", [True, False])
def test_gzip_decompressobj_inflates_gzip_with_and_without_zlib_ng(monkeypatch, fast):
    if fast and not _decode.HAS_ZLIB_NG:
        pytest.fail("zlib-ng is in requirements.txt: scripts/setup.sh installs it")
    monkeypatch.setattr(_decode, "HAS_ZLIB_NG", fast)
    seed = random.randrange(1 << 30)
    data = random.Random(seed).randbytes(300000) + b"\0" * 200000
    inflate = gzip_decompressobj()
    out = inflate.decompress(gzip.compress(data), 1 << 20) + inflate.flush()
    assert out == data and inflate.eof, "seed %d" % seed


def test_read_ahead_yields_every_item_in_order():
    assert list(read_ahead(iter([b"a", b"b", b"c"] * 50), depth=2)) == [b"a", b"b", b"c"] * 50


def test_read_ahead_raises_the_producers_error_after_the_items_before_it():
    def produce():
        yield b"one"
        yield b"two"
        raise ValueError("broken gzip")
    got = []
    with pytest.raises(ValueError, match="broken gzip"):
        for item in read_ahead(produce()):
            got.append(item)
    assert got == [b"one", b"two"]


def test_read_ahead_runs_the_producer_in_another_thread():
    threads = []

    def produce():
        for _item in range(3):
            threads.append(threading.current_thread())
            yield b"x"
    assert list(read_ahead(produce())) == [b"x"] * 3
    assert threading.current_thread() not in threads


def test_a_consumer_that_stops_early_stops_the_producer():
    closed = threading.Event()
    produced = []

    def produce():
        try:
            for i in range(10000):
                produced.append(i)
                yield os.urandom(16)
        finally:
            closed.set()
    reader = read_ahead(produce(), depth=2)
    next(reader)
    reader.close()          # the consumer failed (a full disk): the generator is closed
    assert closed.wait(10), "the producer must stop and close its source"
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count and count < 10, produced[-1:]
