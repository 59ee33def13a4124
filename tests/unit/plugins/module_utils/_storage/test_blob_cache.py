"""The accelerator's blob cache: LRU bound, one fetch per blob, nothing cached unverified, no reader waiting on another."""

import errno
import io
import os
import threading
import time

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._storage import blob_cache as _blob_cache
from ansible_collections.dogestry.dogestry.plugins.module_utils._storage.blob_cache import BlobCache
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import BlobCorruptError, RemoteError

BOUND = 60      # seconds a test waits for what must happen: generous, so a busy machine does not fail it


class Fetches:
    def __init__(self, data, delay=0.0):
        self.data, self.delay, self.count = data, delay, 0

    def __call__(self):
        self.count += 1
        time.sleep(self.delay)
        return io.BytesIO(self.data)


def expecting(data):
    """A verifier: reads the object as it is iterated, and raises at the end unless it was `data`."""
    def verifier(reader):
        got = b""
        for chunk in iter(lambda: reader.read(1 << 16), b""):
            got += chunk
            yield chunk
        if got != data:
            raise BlobCorruptError("not the blob")
    return verifier


def read_all(cache, key, fetch, verifier=None):
    with cache.open(key, fetch, verifier) as reader:
        data = reader.read()
        reader.verified()
    return data


def wait_for(condition):
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "not within %d s" % BOUND
        time.sleep(0.01)


def test_second_read_is_a_hit_and_unverified_fetches_are_not_cached(tmp_path):
    hits, misses = [], []
    cache = BlobCache(str(tmp_path), 100, lambda: hits.append(1), lambda: misses.append(1))
    fetch = Fetches(b"x" * 10)
    with pytest.raises(BlobCorruptError):
        read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch, expecting(b"something else"))
    assert "blobs/sha256/aa/aa1.lz4" not in cache and os.listdir(str(tmp_path)) == []
    assert read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch, expecting(b"x" * 10)) == b"x" * 10
    wait_for(lambda: "blobs/sha256/aa/aa1.lz4" in cache)
    assert read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch) == b"x" * 10
    assert (fetch.count, len(misses), len(hits)) == (2, 2, 1)
    assert os.listdir(str(tmp_path)) == ["aa1.lz4"]


def test_lru_eviction_keeps_the_bound(tmp_path):
    cache = BlobCache(str(tmp_path), 25)
    for name in ("a", "b"):
        read_all(cache, "k/" + name, Fetches(b"1" * 10))
        wait_for(lambda: "k/" + name in cache)
    read_all(cache, "k/a", Fetches(b"unused"))            # a is now the most recent
    read_all(cache, "k/c", Fetches(b"3" * 10))
    wait_for(lambda: "k/c" in cache)
    assert "k/a" in cache and "k/b" not in cache
    assert cache.size == 20 and sorted(os.listdir(str(tmp_path))) == ["a", "c"]
    assert read_all(cache, "k/huge", Fetches(b"h" * 30)) == b"h" * 30     # bigger than the whole cache: served, not kept
    wait_for(lambda: not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")])
    assert "k/huge" not in cache and cache.size == 20


def test_concurrent_reads_fetch_once(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    fetch = Fetches(b"y" * 100, delay=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(read_all(cache, "k/one", fetch, expecting(b"y" * 100))))
               for _n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"y" * 100] * 8 and fetch.count == 1


class Gated(io.RawIOBase):
    """A remote object of `size` bytes that a test hands out a piece at a time."""

    def __init__(self, data, fail_at=None):
        self.data, self.fail_at, self.offset = data, fail_at, 0

    def readable(self):
        return True

    def read(self, size=-1):
        if self.fail_at is not None and self.offset >= self.fail_at:
            raise RemoteError("the connection to the remote broke")
        size = len(self.data) if size is None or size < 0 else size
        if self.fail_at is not None:
            size = min(size, self.fail_at - self.offset)
        data = self.data[self.offset:self.offset + size]
        self.offset += len(data)
        return data


def test_a_slow_client_holds_back_no_other_client_of_the_blob(tmp_path):
    data = bytes(range(256)) * 4096
    cache = BlobCache(str(tmp_path), 10 << 20)
    fetch = Fetches(data)
    follower_done = threading.Event()
    leader_got = []

    def slow_leader():
        with cache.open("k/blob", fetch, expecting(data)) as reader:
            leader_got.append(reader.read(10))
            follower_done.wait(3 * BOUND)       # its client stops reading until the other client is served
            leader_got.append(reader.read())

    leader = threading.Thread(target=slow_leader)
    leader.start()
    wait_for(lambda: leader_got)
    follower = []
    thread = threading.Thread(target=lambda: follower.append(read_all(cache, "k/blob", fetch, expecting(data))))
    thread.start()
    thread.join(BOUND)
    served_while_stalled = list(follower)
    follower_done.set()
    leader.join(BOUND)
    assert served_while_stalled == [data], "the second client was not served while the first one stalled"
    assert b"".join(leader_got) == data and fetch.count == 1


def test_a_full_cache_disk_serves_the_blob_uncached(tmp_path, monkeypatch):
    data = os.urandom(3 << 20)
    cache = BlobCache(str(tmp_path), 100 << 20)
    real_write, written = os.write, []

    def write(fd, view):          # the cache's disk fills up after 1 MiB
        if sum(written) >= 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real_write(fd, view))
        return written[-1]
    monkeypatch.setattr(_blob_cache.os, "write", write)
    fetch = Fetches(data)
    assert read_all(cache, "k/big", fetch, expecting(data)) == data
    monkeypatch.setattr(_blob_cache.os, "write", real_write)
    wait_for(lambda: not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")])
    assert "k/big" not in cache and os.listdir(str(tmp_path)) == []


def test_a_fetch_broken_mid_blob_lets_its_readers_go_on_from_the_remote_still_checked(tmp_path):
    data = os.urandom(1 << 20)
    objects = [Gated(data, fail_at=300000), Gated(data)]
    cache = BlobCache(str(tmp_path), 10 << 20)
    assert read_all(cache, "k/b", lambda: objects.pop(0), expecting(data)) == data
    assert objects == [] and "k/b" not in cache
    changed = data[:-1] + bytes([data[-1] ^ 1])          # the remote changed under the broken fetch
    objects = [Gated(data, fail_at=300000), Gated(changed)]
    with pytest.raises(BlobCorruptError):
        read_all(cache, "k/b", lambda: objects.pop(0), expecting(data))


def test_a_corrupt_fetch_fails_its_readers_and_is_not_cached(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    fetch = Fetches(b"z" * 10)
    with pytest.raises(BlobCorruptError):
        read_all(cache, "k/z", fetch, expecting(b"Z" * 10))
    assert read_all(cache, "k/z", fetch, expecting(b"z" * 10)) == b"z" * 10 and fetch.count == 2


def test_a_missing_blob_raises_to_the_client_that_asked(tmp_path):
    from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import RemoteNotFoundError

    def missing():
        raise RemoteNotFoundError("no such blob")
    cache = BlobCache(str(tmp_path), 1000)
    with pytest.raises(RemoteNotFoundError):
        cache.open("k/gone", missing)
    assert os.listdir(str(tmp_path)) == [] and read_all(cache, "k/gone", Fetches(b"back")) == b"back"


def test_restart_finds_entries_and_drops_interrupted_fetches(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    read_all(cache, "k/kept", Fetches(b"k" * 10))
    wait_for(lambda: "k/kept" in cache)
    (tmp_path / "half.0123.tmp").write_bytes(b"partial")
    again = BlobCache(str(tmp_path), 1000)
    assert "k/kept" in again and again.size == 10 and not (tmp_path / "half.0123.tmp").exists()
    assert read_all(again, "k/kept", Fetches(b"never")) == b"k" * 10


def test_a_reader_that_stopped_before_a_fetch_broke_still_gets_a_verdict(tmp_path):
    data = os.urandom(1 << 20)
    changed = data[:-1] + bytes([data[-1] ^ 1])
    cache = BlobCache(str(tmp_path), 10 << 20)
    for second, verdict in ((data, None), (changed, BlobCorruptError)):
        objects = [Gated(data, fail_at=300000), Gated(second)]
        with cache.open("k/r", lambda: objects.pop(0), expecting(data)) as reader:
            assert reader.read(10) == data[:10]         # a range: the client wants no more
            if verdict is None:
                reader.verified()
            else:
                with pytest.raises(verdict):
                    reader.verified()
        assert objects == [] and "k/r" not in cache


class FromPeers(Gated):
    """An object as fleet peers serve it (untrusted): `blame()` and `fallback()` as _peers.PeerReader has them.
    `released`: the test lets the bytes past `hold_at` through once it has looked at what readers saw."""

    untrusted = True

    def __init__(self, data, remote_data, hold_at=None, fail_at=None):
        Gated.__init__(self, data, fail_at)
        self.remote_data, self.hold_at = remote_data, hold_at
        self.released, self.holding = threading.Event(), threading.Event()
        self.blamed = 0

    def read(self, size=-1):
        if self.hold_at is not None and self.offset >= self.hold_at and not self.released.is_set():
            self.holding.set()
            assert self.released.wait(BOUND)
        return Gated.read(self, min(size, 1 << 16) if size and size > 0 else 1 << 16)

    def blame(self):
        self.blamed += 1

    def fallback(self):
        return io.BytesIO(self.remote_data)


def test_bytes_from_peers_reach_no_reader_before_they_are_verified_and_a_liar_is_replaced_by_the_remote(tmp_path):
    data = os.urandom(1 << 20)
    lie = data[:600000] + bytes([data[600000] ^ 1]) + data[600001:]
    cache = BlobCache(str(tmp_path), 10 << 20)
    peers = FromPeers(lie, data, hold_at=700000)
    stored = []
    cache.on_stored = stored.append
    got = []
    with cache.open("k/p", lambda: peers, expecting(data)) as reader:
        thread = threading.Thread(target=lambda: got.append(reader.read()))
        thread.start()
        assert peers.holding.wait(BOUND)
        time.sleep(0.2)             # what a reader could have read by now (nothing may have come)
        assert got == [] and thread.is_alive()
        peers.released.set()
        thread.join(BOUND)
        reader.verified()
    assert got == [data] and peers.blamed == 1
    wait_for(lambda: "k/p" in cache)
    assert stored == ["k/p"]


def test_a_fetch_from_peers_that_broke_shows_its_readers_none_of_its_bytes(tmp_path):
    data = os.urandom(1 << 20)
    lie = bytes([data[0] ^ 1]) + data[1:]         # wrong before it breaks: the remote's bytes after could not tell
    objects = [FromPeers(lie, data, fail_at=500000), Gated(data)]
    cache = BlobCache(str(tmp_path), 10 << 20)
    with cache.open("k/q", lambda: objects.pop(0), expecting(data)) as reader:
        assert reader.read() == data        # all of it from the second fetch, none of the first's bytes
        reader.verified()
    assert objects == []
