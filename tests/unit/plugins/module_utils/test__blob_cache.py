"""The accelerator's blob cache: LRU bound, single-flight fetches, nothing cached before commit."""

import io
import os
import threading
import time

from ansible_collections.dogestry.dogestry.plugins.module_utils._blob_cache import BlobCache


class Fetches:
    def __init__(self, data, delay=0.0):
        self.data, self.delay, self.count = data, delay, 0

    def __call__(self):
        self.count += 1
        time.sleep(self.delay)
        return io.BytesIO(self.data)


def read_all(cache, key, fetch, commit=True):
    with cache.open(key, fetch) as reader:
        data = reader.read()
        if commit:
            reader.commit()
    return data


def test_second_read_is_a_hit_and_uncommitted_reads_are_not_cached(tmp_path):
    hits, misses = [], []
    cache = BlobCache(str(tmp_path), 100, lambda: hits.append(1), lambda: misses.append(1))
    fetch = Fetches(b"x" * 10)
    assert read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch, commit=False) == b"x" * 10
    assert "blobs/sha256/aa/aa1.lz4" not in cache and os.listdir(str(tmp_path)) == []
    assert read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch) == b"x" * 10
    assert read_all(cache, "blobs/sha256/aa/aa1.lz4", fetch) == b"x" * 10
    assert (fetch.count, len(misses), len(hits)) == (2, 2, 1)
    assert os.listdir(str(tmp_path)) == ["aa1.lz4"]


def test_lru_eviction_keeps_the_bound(tmp_path):
    cache = BlobCache(str(tmp_path), 25)
    for name in ("a", "b"):
        read_all(cache, "k/" + name, Fetches(b"1" * 10))
    read_all(cache, "k/a", Fetches(b"unused"))            # a is now the most recent
    read_all(cache, "k/c", Fetches(b"3" * 10))
    assert "k/a" in cache and "k/c" in cache and "k/b" not in cache
    assert cache.size == 20 and sorted(os.listdir(str(tmp_path))) == ["a", "c"]
    read_all(cache, "k/huge", Fetches(b"h" * 30))         # bigger than the whole cache: served, not kept
    assert "k/huge" not in cache and cache.size == 20


def test_concurrent_reads_fetch_once(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    fetch = Fetches(b"y" * 100, delay=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(read_all(cache, "k/one", fetch))) for _n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b"y" * 100] * 8 and fetch.count == 1


def test_a_failed_leader_lets_a_follower_fetch(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    fetch = Fetches(b"z" * 10)
    read_all(cache, "k/z", fetch, commit=False)       # a leader whose bytes failed verification
    assert read_all(cache, "k/z", fetch) == b"z" * 10 and fetch.count == 2


def test_restart_finds_entries_and_drops_interrupted_fetches(tmp_path):
    cache = BlobCache(str(tmp_path), 1000)
    read_all(cache, "k/kept", Fetches(b"k" * 10))
    (tmp_path / "half.0123.tmp").write_bytes(b"partial")
    again = BlobCache(str(tmp_path), 1000)
    assert "k/kept" in again and again.size == 10 and not (tmp_path / "half.0123.tmp").exists()
    assert read_all(again, "k/kept", Fetches(b"never")) == b"k" * 10
