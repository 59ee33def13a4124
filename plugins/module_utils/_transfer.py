# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""Bounded parallelism for blob transfers: at most `jobs` running, a few more queued, first error wins.

A base module (the storage backends read in parallel too): imports nothing of the collection.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, List, Set

# Transfers in flight at once: each holds a connection, a thread and up to a part in memory;
# beyond this a store or the host gives out before throughput grows.
MAX_JOBS = 64


class TransferPool:
    """Submit transfers while the producer goes on; `join()` re-raises the first failure.

    Back-pressure: submit() blocks while 2*jobs transfers are pending, so a fast producer
    (a `docker save` stream) never piles up unbounded spool files or memory.
    """

    def __init__(self, jobs: int):
        self.jobs = max(1, int(jobs))
        self._executor = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="dogestry")
        self._pending: Set[Future] = set()
        self._errors: List[BaseException] = []

    def submit(self, fn: Callable, *args) -> Future:
        self._raise_if_failed()
        while len(self._pending) >= 2 * self.jobs:
            self._collect(wait(self._pending, return_when=FIRST_COMPLETED).done)
            self._raise_if_failed()
        future = self._executor.submit(fn, *args)
        self._pending.add(future)
        return future

    def _collect(self, done) -> None:
        for future in done:
            self._pending.discard(future)
            if future.cancelled():
                continue
            exc = future.exception()
            if exc is not None:
                self._errors.append(exc)

    def _raise_if_failed(self) -> None:
        if self._errors:
            self.cancel()
            raise self._errors[0]

    def join(self) -> None:
        self._collect(wait(self._pending).done)
        self._raise_if_failed()

    def cancel(self) -> None:
        for future in self._pending:
            future.cancel()
        self._collect(wait(self._pending).done)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.cancel()
        self._executor.shutdown(wait=True)
        return False


def parallel_map(fn: Callable, items: Iterable, jobs: int) -> list:
    """[fn(item) for item in items], `jobs` at a time (for round trips, not CPU); first error raises."""
    items = list(items)
    if len(items) <= 1 or jobs <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(jobs, len(items)), thread_name_prefix="dogestry") as pool:
        return list(pool.map(fn, items))
