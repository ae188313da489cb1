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
are not shardable and are refused by :func:`check_shardable`.

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


@contextmanager
def shard_reduction(all_reduce_sum: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Inside, column sums of the aggregation geometry are summed over the processes."""
    token = _REDUCE.set(all_reduce_sum)
    try:
        yield
    finally:
        _REDUCE.reset(token)


def reduce_partial(partial: Tensor) -> Tensor:
    """A sum over this process's columns, made the sum over all columns (identity when unsharded)."""
    fn = _REDUCE.get()
    return partial if fn is None else fn(partial)


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
