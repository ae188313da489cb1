"""Sharded aggregation is exact: W 'processes' (threads with an all-reduce through a barrier), each
aggregating its slice of the columns with the global Gram matrix, give the unsharded aggregate."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import Tensor

from trustworthy_dl.aggregation import get_aggregator
from trustworthy_dl.aggregation.sharding import column_bounds, shard_reduction


class _ThreadAllReduce:
    """An in-process all-reduce (sum) over ``w`` threads."""

    def __init__(self, w: int) -> None:
        self.w = w
        self.barrier = threading.Barrier(w)
        self.slots: list[Tensor | None] = [None] * w

    def for_rank(self, k: int):  # type: ignore[no-untyped-def]
        def all_reduce_sum(t: Tensor) -> Tensor:
            self.slots[k] = t
            self.barrier.wait()
            total = torch.stack([s for s in self.slots if s is not None]).sum(0)
            self.barrier.wait()
            return total

        return all_reduce_sum


def _sharded(agg, rows_ND: Tensor, w: int) -> Tensor:  # type: ignore[no-untyped-def]
    bounds = column_bounds(rows_ND.shape[1], w)
    reducer = _ThreadAllReduce(w)
    out: list[Tensor | None] = [None] * w
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with shard_reduction(reducer.for_rank(k)):
                out[k] = agg(rows_ND[:, bounds[k] : bounds[k + 1]].contiguous()).value_D
        except BaseException as err:  # surfaced below
            errors.append(err)
            reducer.barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(w)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return torch.cat([o for o in out if o is not None])


@pytest.mark.parametrize(
    ("rule", "params", "pre"),
    [
        ("median", {}, []),
        ("trimmed_mean", {}, []),
        ("krum", {}, []),
        ("multi_krum", {}, []),
        ("geometric_median", {}, []),
        ("centered_clip", {}, []),
        ("mda", {}, []),
        ("mean", {}, [{"name": "nnm"}]),
        ("krum", {}, [{"name": "arc"}]),
    ],
)
def test_sharded_equals_gather(rule: str, params: dict, pre: list) -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(9, 3001, generator=g) * 0.1 + torch.randn(3001, generator=g)
    rows[2] = -5 * rows[0]  # a Byzantine-looking row
    rows[7] *= 30.0
    whole = get_aggregator(rule, f=2, pre=pre, **params)(rows).value_D
    for w in (2, 3):
        sharded = _sharded(get_aggregator(rule, f=2, pre=pre, **params), rows, w)
        torch.testing.assert_close(sharded, whole, rtol=1e-5, atol=1e-6)
