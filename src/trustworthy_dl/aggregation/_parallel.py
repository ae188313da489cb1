"""Coarse-grained parallelism for the blocked kernels (``_gram``, ``_sortnet``).

Those kernels issue thousands of small torch ops (one per comparator or GEMM per column block).
With intra-op parallelism every such op is an OpenMP fork/join; when the machine is shared, a
descheduled worker thread stalls each join, and we measured a 16-node Gram pass going from 0.17 s
to 1.5-10 s (2 threads, load 4-5). So on CPU the kernels run their ops single-threaded and split
the columns into one contiguous chunk per thread instead: one join per call, not per op.

Legend: D columns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["map_column_chunks"]

R = TypeVar("R")

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tdl-agg")
            _POOL_SIZE = workers
        return _POOL


@contextmanager
def _single_threaded_ops() -> Iterator[int]:
    """One intra-op thread inside; yields how many there were (the chunk workers to use)."""
    n = torch.get_num_threads()
    if n <= 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def map_column_chunks(fn: Callable[[int, int], R], D: int, block: int, device: torch.device) -> list[R]:
    """``[fn(start, stop), ...]`` over contiguous column chunks of ``[0, D)`` aligned to ``block``.

    On CPU with more than one thread and more than two blocks of work, the chunks run on a thread
    pool with single-threaded torch ops; otherwise ``fn(0, D)`` runs as is.
    """
    nblocks = -(-D // block)
    if device.type != "cpu" or nblocks <= 2 or torch.get_num_threads() <= 1:
        return [fn(0, D)]
    with _single_threaded_ops() as workers:
        per = -(-nblocks // workers) * block
        bounds = [(s, min(D, s + per)) for s in range(0, D, per)]
        if len(bounds) == 1:
            return [fn(0, D)]
        futures = [_pool(workers).submit(fn, s, e) for s, e in bounds[1:]]
        first = fn(*bounds[0])
        return [first, *(f.result() for f in futures)]
