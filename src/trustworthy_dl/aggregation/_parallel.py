"""Coarse-grained parallelism for the aggregators.

The rules issue thousands of small torch ops (one per comparator or GEMM per column block, small
(N, N) matrices). With intra-op parallelism each of them is an OpenMP fork/join, and when the
machine is shared a descheduled worker stalls every join: we measured a 16-node Gram pass going
from 0.17 s to 1.5-10 s (2 threads, load 4-5), and 10 ms for an (8, 10000) ``mean``. So an
aggregator call runs its torch ops single-threaded (:func:`single_threaded`) and gets its
parallelism from :func:`map_column_chunks`, which splits the columns into one contiguous chunk
per thread: one join per pass over the data instead of one per op. (``torch.set_num_threads`` is
process-wide: aggregators are not meant to be called from several Python threads at once.)

Legend: D columns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["map_column_chunks", "single_threaded"]

R = TypeVar("R")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()
_WORKERS: int | None = None  # set while inside single_threaded(): the thread count to restore


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or workers > _POOL_SIZE:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tdl-agg")
            _POOL_SIZE = workers
        return _POOL


@contextmanager
def single_threaded() -> Iterator[int]:
    """Torch ops use one intra-op thread inside; yields the previous count (the chunk workers).

    Re-entrant: nested uses keep the outer setting.
    """
    global _WORKERS
    if _WORKERS is not None:
        yield _WORKERS
        return
    n = torch.get_num_threads()
    _WORKERS = n
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield n
    finally:
        if n > 1:
            torch.set_num_threads(n)
        _WORKERS = None


def map_column_chunks(fn: Callable[[int, int], R], D: int, block: int, device: torch.device) -> list[R]:
    """``[fn(start, stop), ...]`` over contiguous column chunks of ``[0, D)`` aligned to ``block``.

    On CPU with several threads and more than two blocks of work, the chunks run on a thread pool
    with single-threaded torch ops; otherwise ``fn(0, D)`` runs as is.
    """
    nblocks = -(-D // block)
    if device.type != "cpu" or nblocks <= 2:
        return [fn(0, D)]
    with single_threaded() as workers:
        if workers <= 1:
            return [fn(0, D)]
        per = -(-nblocks // workers) * block
        bounds = [(s, min(D, s + per)) for s in range(0, D, per)]
        if len(bounds) == 1:
            return [fn(0, D)]
        futures = [_pool(workers).submit(fn, s, e) for s, e in bounds[1:]]
        first = fn(*bounds[0])
        return [first, *(f.result() for f in futures)]
