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


def _run_shards(w: int, cols: int, work) -> list:  # type: ignore[no-untyped-def]
    """Run ``work(k, lo, hi)`` in w threads, each inside a sharded round over its column slice."""
    bounds = column_bounds(cols, w)
    reducer = _ThreadAllReduce(w)
    out: list = [None] * w
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with shard_reduction(reducer.for_rank(k), (bounds[k], bounds[k + 1], cols)):
                out[k] = work(k, bounds[k], bounds[k + 1])
        except BaseException as err:
            errors.append(err)
            reducer.barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(w)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _sharded(agg, rows_ND: Tensor, w: int) -> Tensor:  # type: ignore[no-untyped-def]
    parts = _run_shards(w, rows_ND.shape[1], lambda k, lo, hi: agg(rows_ND[:, lo:hi].contiguous()).value_D)
    return torch.cat(parts)


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


@pytest.mark.parametrize(
    ("num_coords", "methods"),
    [(None, ("mandera", "distance")), (1500, ("mandera", "distance")), (None, ("mandera_paper",))],
)
def test_sharded_stage1_detection_equals_gather(num_coords: int | None, methods: tuple[str, ...]) -> None:
    from trustworthy_dl.security.detector import Stage1Detector

    g = torch.Generator().manual_seed(1)
    rows = torch.randn(10, 4001, generator=g) * 0.1 + torch.randn(4001, generator=g)
    rows[[3, 7]] = rows[[0, 1, 2]].mean(0) - 1.5 * rows[[0, 1, 2]].std(0)  # ALIE-like
    rows[7] += 1e-2 * torch.randn(4001, generator=g)  # (exact copies make the collusion score log(~0))
    rows[5, 17] = float("nan")

    def det() -> Stage1Detector:  # each process keeps its own (rank-history) state
        return Stage1Detector(methods=methods, num_coords=num_coords)

    whole = det().inspect(rows, generator=torch.Generator().manual_seed(9))
    assert whole.flags_N[[3, 5, 7]].all()
    parts = _run_shards(
        3,
        rows.shape[1],
        lambda k, lo, hi: det().inspect(rows[:, lo:hi], generator=torch.Generator().manual_seed(9)),
    )
    for res in parts:
        assert torch.equal(res.flags_N, whole.flags_N)
        finite = torch.isfinite(whole.scores_N)
        torch.testing.assert_close(res.scores_N[finite], whole.scores_N[finite], rtol=1e-6, atol=1e-9)
        assert res.info["nonfinite"] == [5] and res.info["num_coords"] == whole.info["num_coords"]


def test_sharded_verification_compares_slices() -> None:
    from trustworthy_dl.security.verification import GradientVerifier

    g = torch.Generator().manual_seed(2)
    honest = torch.randn(5, 999, generator=g)
    sent = honest.clone()
    sent[2, 500:] += 1e-2  # node 2 lies on the last half only
    ver = GradientVerifier(rtol=1e-3, atol=1e-8, spot_check_fraction=0.0, seed=0)
    whole = ver.verify(sent, [1, 2], lambda n: honest[n])

    def work(k: int, lo: int, hi: int):  # type: ignore[no-untyped-def]
        v = GradientVerifier(rtol=1e-3, atol=1e-8, spot_check_fraction=0.0, seed=0)
        return v.verify(sent[:, lo:hi], [1, 2], lambda n: honest[n, lo:hi])

    for res in _run_shards(3, sent.shape[1], work):
        assert res.mismatched == whole.mismatched == [2] and res.cleared == [1]
        assert res.rel_errors[2] == pytest.approx(whole.rel_errors[2], rel=1e-6)
