"""Sharded robust aggregation (BTARD-style): each process aggregates a slice of the coordinates.

There is no single aggregation point: after an all-to-all, process j holds every node's columns
``[b_j, b_{j+1})`` and runs the rule on them. That is exact, not an approximation:

* coordinate-wise rules (mean, median, trimmed mean) act on each column alone;
* distance-based rules (Krum, Multi-Krum, geometric median, CenteredClip, MDA, Bulyan) and the
  pre-aggregators (NNM, bucketing, clipping, ARC) see the rows only through the Gram matrix and
  the row norms of ``_gram``, which are sums over columns. Inside :func:`shard_reduction`
  those sums are all-reduced over the processes, so every process decides with the global
  distances and applies the same coefficients to its own columns.

Rules that look at the rows in other ways (DnC's random subspace, SignGuard's sign statistics)
are not shardable and are refused by :func:`check_shardable`. The security layer shards the same
way: stage 1 samples the same global coordinates and sums its per-node statistics (MANDERA's rank
moments, the distance scores' Gram matrix and dot products) over the processes; stage 2 compares a
re-computed gradient slice by slice, the error norms summed over the processes.

Legend: N rows, D columns, W processes, D_j process j's columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

from trustworthy_dl.errors import ConfigError

__all__ = [
    "SHARDABLE_PRE",
    "SHARDABLE_RULES",
    "check_shardable",
    "column_bounds",
    "reduce_partial",
    "shard_columns",
    "shard_reduction",
]

SHARDABLE_RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clip",
    "mda",
    "bulyan",
)
SHARDABLE_PRE = ("nnm", "bucketing", "clip", "arc")

_REDUCE: ContextVar[Callable[[Tensor], Tensor] | None] = ContextVar("tdl_shard_reduce", default=None)
_COLUMNS: ContextVar[tuple[int, int, int] | None] = ContextVar("tdl_shard_columns", default=None)


@contextmanager
def shard_reduction(
    all_reduce_sum: Callable[[Tensor], Tensor], columns: tuple[int, int, int] | None = None
) -> Iterator[None]:
    """Inside, sums over columns (of the aggregation geometry, and of the security layer's
    statistics) are summed over the processes; ``columns`` = (first, end, D) of this process's slice."""
    token, ctoken = _REDUCE.set(all_reduce_sum), _COLUMNS.set(columns)
    try:
        yield
    finally:
        _REDUCE.reset(token)
        _COLUMNS.reset(ctoken)


def reduce_partial(partial: Tensor) -> Tensor:
    """A sum over this process's columns, made the sum over all columns (identity when unsharded)."""
    fn = _REDUCE.get()
    return partial if fn is None else fn(partial)


def shard_columns() -> tuple[int, int, int] | None:
    """(first, end, D) of this process's column slice inside a sharded round; None otherwise."""
    return _COLUMNS.get() if _REDUCE.get() is not None else None


def column_bounds(num_cols: int, parts: int) -> list[int]:
    """``parts + 1`` boundaries cutting ``num_cols`` columns into near-equal contiguous slices."""
    return [num_cols * j // parts for j in range(parts + 1)]


def check_shardable(rule: str, pre: list[str]) -> None:
    """A ConfigError unless the rule and its pre-aggregators can run sharded exactly."""
    from trustworthy_dl.aggregation.base import AGGREGATORS, PRE_AGGREGATORS

    name = AGGREGATORS.canonical(rule) if rule in AGGREGATORS else rule
    if name not in SHARDABLE_RULES:
        raise ConfigError(
            f"aggregation.mode=sharded: {rule!r} is not shardable (it looks at the rows beyond their "
            f"columns and distances); shardable rules: {', '.join(SHARDABLE_RULES)}"
        )
    for p in pre:
        pname = PRE_AGGREGATORS.canonical(p) if p in PRE_AGGREGATORS else p
        if pname not in SHARDABLE_PRE:
            raise ConfigError(
                f"aggregation.mode=sharded: pre-aggregator {p!r} is not shardable; shardable: {', '.join(SHARDABLE_PRE)}"
            )
