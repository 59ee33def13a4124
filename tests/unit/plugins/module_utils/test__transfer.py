import threading
import time

import pytest

from ansible_collections.dogestry.dogestry.plugins.module_utils._transfer import TransferPool


def test_runs_everything_with_at_most_jobs_in_parallel():
    running, peak, lock, done = [0], [0], threading.Lock(), []

    def work(index):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        done.append(index)

    with TransferPool(3) as pool:
        for index in range(20):
            pool.submit(work, index)
        pool.join()
    assert sorted(done) == list(range(20))
    assert 1 <= peak[0] <= 3            # bounded by jobs; how close it gets is the scheduler's


def test_first_failure_is_raised_and_later_work_is_not_started():
    started = []

    def work(index):
        started.append(index)
        if index == 0:
            raise OSError("disk full")
        time.sleep(0.05)

    with pytest.raises(OSError, match="disk full"):
        with TransferPool(1) as pool:
            for index in range(50):
                pool.submit(work, index)
            pool.join()
    assert len(started) < 50


def test_parallel_map_keeps_order_and_raises_the_failure():
    from ansible_collections.dogestry.dogestry.plugins.module_utils._transfer import parallel_map
    assert parallel_map(lambda n: n * n, range(20), 4) == [n * n for n in range(20)]
    assert parallel_map(len, [], 4) == []

    def fail_on_seven(n):
        if n == 7:
            raise ValueError("seven")
        return n
    with pytest.raises(ValueError, match="seven"):
        parallel_map(fail_on_seven, range(20), 4)
