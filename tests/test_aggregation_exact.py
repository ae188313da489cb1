"""Hand-computed cases: every aggregator and pre-aggregator on inputs small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trustworthy_dl.aggregation import build_aggregator, get_aggregator
from trustworthy_dl.aggregation._rows import Rows
from trustworthy_dl.aggregation.bucketing import Bucketing
from trustworthy_dl.aggregation.clipping import arc, clip
from trustworthy_dl.aggregation.nnm import nnm


def T(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(a: torch.Tensor, b: list[float], tol: float = 1e-6) -> None:
    torch.testing.assert_close(a.double(), torch.tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


def test_mean() -> None:
    X = T([[1, 2], [3, 4], [5, 9]])
    close(get_aggregator("mean", f=0)(X).value_D, [3, 5])
    r = get_aggregator("mean", f=0)(X, torch.tensor([1.0, 1.0, 2.0]))
    close(r.value_D, [(1 + 3 + 10) / 4, (2 + 4 + 18) / 4])  # weighted
    close(r.weights_N, [0.25, 0.25, 0.5])


def test_median() -> None:
    # column 0: 1, 2, 100 -> 2;  column 1: 5, -1, 0 -> 0
    close(get_aggregator("median", f=1)(T([[1, 5], [2, -1], [100, 0]])).value_D, [2, 0])
    # even n: the mean of the two middle values, (2 + 3) / 2
    close(get_aggregator("median", f=1)(T([[1], [2], [3], [10]])).value_D, [2.5])


def test_trimmed_mean() -> None:
    # column 0: -50 1 2 3 10 -> drop -50 and 10 -> mean(1, 2, 3) = 2
    # column 1:  -3 0 0 6 9  -> drop -3 and 9   -> mean(0, 0, 6) = 2
    X = T([[1, 0], [2, 0], [3, 6], [10, 9], [-50, -3]])
    r = get_aggregator("trimmed_mean", f=1)(X)
    close(r.value_D, [2, 2])
    assert r.weights_N[3] == 0 or r.weights_N[4] == 0  # an extreme row never survives


def test_geometric_median() -> None:
    # In 1-D the geometric median is the median; weights make it the weighted median.
    agg = get_aggregator("geometric_median", f=1, iterations=500, tol=0.0, nu=1e-9)
    close(agg(T([[-1], [0], [5]])).value_D, [0], tol=1e-4)
    close(agg(T([[0], [1], [2]]), torch.tensor([1.0, 1.0, 3.0])).value_D, [2], tol=1e-4)
    # Square corners and p = (0.5, 0.5): the unit vectors from p to the corners sum to norm
    # 0.895 < 1 (p's own weight), so p itself is the geometric median.
    close(agg(T([[1, 1], [1, -1], [-1, 1], [-1, -1], [0.5, 0.5]])).value_D, [0.5, 0.5], tol=1e-4)


def test_geometric_median_of_a_square_with_a_point_at_its_centre() -> None:
    agg = get_aggregator("geometric_median", f=1, iterations=1000, tol=0.0, nu=1e-9)
    close(agg(T([[1, 1], [1, -1], [-1, 1], [-1, -1], [0, 0]])).value_D, [0, 0], tol=1e-5)


def test_krum_and_multi_krum() -> None:
    # n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared distances.
    # 0: 4 + 9 = 13;  2: 1 + 4 = 5;  3: 1 + 9 = 10;  7: 16 + 25 = 41;  100: 93^2 + 97^2
    X = T([[0], [2], [3], [7], [100]])
    r = get_aggregator("krum", f=1)(X)
    close(r.value_D, [2])
    assert r.selected_N.tolist() == [False, True, False, False, False]
    assert r.info["score"] == 5
    # Multi-Krum keeps the m = n - f = 4 best: 0, 2, 3, 7 -> mean 3
    close(get_aggregator("multi_krum", f=1)(X).value_D, [3])
    close(get_aggregator("multi_krum", f=1, m=2)(X).value_D, [2.5])  # 2 and 3


def test_krum_averages_exact_ties() -> None:
    # f = 0, n = 3: one neighbour counted; 0 and 1 are each other's nearest (score 1 each).
    close(get_aggregator("krum", f=0)(T([[0], [1], [5]])).value_D, [0.5])


def test_bulyan() -> None:
    # n = 7, f = 1: theta = 5 rows by iterated Krum, then the beta = 3 closest to the median.
    # Pool of 7 (4 neighbours): scores 0:62 1:39 3:23 4:30 6:54 10:182 -> take 3
    # Pool of 6 (3 neighbours): 0:53 1:35 4:29 6:45 10:133        -> take 4
    # Pool of 5 (2 neighbours): 0:37 1:26 6:41 10:97              -> take 1
    # Pool of 4 (1 neighbour):  0:36 6:16 10:16 -> tie; distance sums 6:8888 10:8216 -> take 10
    # Pool of 3 (1 neighbour):  0:36 6:36 -> tie; distance sums 0:10036 6:8872       -> take 6
    # Selected 1 3 4 6 10, median 4, the 3 closest: 3 4 6 -> 13/3
    r = get_aggregator("bulyan", f=1)(T([[0], [1], [3], [4], [6], [10], [100]]))
    close(r.value_D, [13 / 3])
    assert r.selected_N.tolist() == [False, True, True, True, True, True, False]


def test_centered_clip() -> None:
    X = T([[3], [-1], [0.5]])
    # From 0 with tau = 1: steps clip(3), clip(-1), clip(0.5) = 1, -1, 0.5 -> v = 0.5 / 3 = 1/6
    # then 17/6 -> 1, -7/6 -> -1, 1/3 -> 1/3: v = 1/6 + (1/3) / 3 = 5/18
    cc = get_aggregator("centered_clip", f=1, tau=1.0, iterations=2, tol=0.0, init="zero")
    close(cc(X).value_D, [5 / 18])
    # To convergence: the fixed point solves 1 - 1 + (0.5 - v) = 0, v = 0.5
    cc = get_aggregator("centered_clip", f=1, tau=1.0, iterations=1000, tol=0.0, init="zero")
    close(cc(X).value_D, [0.5], tol=1e-5)


def test_centered_clip_starts_from_the_previous_centre() -> None:
    X = T([[3], [-1], [0.5]])
    cc = get_aggregator("centered_clip", f=1, tau=1.0, iterations=1, tol=0.0)
    first = cc(X)  # first round: from the medoid, 0.5; steps 1 (clipped), -1, 0 -> v = 0.5
    assert first.info["start"] == "medoid"
    close(first.value_D, [0.5])
    X2 = T([[4], [0], [1]])
    # from 0.5: clip(3.5)=1, clip(-0.5)=-0.5, clip(0.5)=0.5 -> v = 0.5 + 1/3
    second = cc(X2)
    assert second.info["start"] == "previous"
    close(second.value_D, [0.5 + 1 / 3])
    # value = c_prev * centre + sum_i weights_N[i] * x_i
    c_prev = 1 - float(second.weights_N.sum())
    close(c_prev * 0.5 + second.weights_N.float() @ X2, [0.5 + 1 / 3])
    # a non-finite previous centre (restored from a bad checkpoint) is not used: the medoid is
    cc.load_state_dict({"centre": torch.tensor([float("nan")]), "rounds": 2})
    third = cc(X2)
    assert third.info["start"] == "medoid"
    close(third.value_D, [1 + (1 + 0 + 0) / 3 - 1 / 3])


def test_mda() -> None:
    # n = 4, f = 1: drop 10 (the diameter of {0, 1, 2} is 2, every other triple is wider)
    r = get_aggregator("mda", f=1)(T([[0], [1], [2], [10]]))
    close(r.value_D, [1])
    assert r.info["diameter"] == pytest.approx(2.0)
    assert r.info["exact"] is True


def test_dnc() -> None:
    # The outlier dominates the top singular direction, so it has the largest score.
    X = T([[0, 0], [1, 1], [-1, 1], [1, -1], [-1, -1], [50, 40]])
    r = get_aggregator("dnc", f=1)(X)
    close(r.value_D, [0, 0])
    assert r.info["removed"] == [5]


def test_signguard() -> None:
    # Norms 1.414 1.562 1.421 1.345 42.4: median M = 1.421 (row 2); the outlier fails the norm
    # filter (ratio 30 > 3). All signs are positive: one cluster. Row 1 is clipped to norm M.
    X = T([[1, 1], [1, 1.2], [1.1, 0.9], [0.9, 1], [30, 30]])
    r = get_aggregator("signguard", f=1)(X)
    m = math.hypot(1.1, 0.9)
    s = m / math.hypot(1, 1.2)
    close(r.value_D, [(1 + s + 1.1 + 0.9) / 4, (1 + 1.2 * s + 0.9 + 1) / 4], tol=1e-5)
    assert r.selected_N.tolist() == [True, True, True, True, False]


def test_nnm() -> None:
    # n = 4, f = 1: each row becomes the mean of its 3 nearest rows (itself included).
    # 0 -> {0, 1, 3}; 1 -> {1, 0, 3}; 3 -> {3, 1, 0}; 10 -> {10, 3, 1}
    X = T([[0], [1], [3], [10]])
    Y = nnm(X, f=1).materialize()
    close(Y.flatten(), [4 / 3, 4 / 3, 4 / 3, 14 / 3])
    r = build_aggregator("mean", f=1, pre=[{"name": "nnm"}])(X)
    close(r.value_D, [(3 * 4 / 3 + 14 / 3) / 4])
    close(r.weights_N, [3 / 12, 4 / 12, 4 / 12, 1 / 12])  # node 0 is not a neighbour of row 3


def test_bucketing() -> None:
    X = T([[0], [1], [2], [3], [4]])
    rows = Bucketing(s=2, seed=3)(X)
    Y = rows.materialize().flatten()
    assert rows.n == 3  # buckets of 2, 2 and 1
    C = rows.coefficients()
    assert sorted(C.sum(1).tolist()) == [1.0, 1.0, 1.0] and sorted((C > 0).sum(1).tolist()) == [1, 2, 2]
    close(Y, (C.float() @ X).flatten().tolist())
    # The mean of bucket means, weighted by bucket size, is the plain mean.
    r = build_aggregator("mean", f=0, pre=[{"name": "bucketing", "s": 2}])(X)
    close(r.value_D, [2])
    close(r.weights_N, [0.2] * 5)


def test_static_clip() -> None:
    X = T([[3, 4], [0.3, 0.4]])
    close(clip(X, c=1.0).materialize().flatten(), [0.6, 0.8, 0.3, 0.4])
    r = build_aggregator("mean", f=0, pre=[{"name": "clip", "c": 1.0}])(X)
    close(r.value_D, [0.45, 0.6])
    close(r.weights_N, [0.1, 0.5])  # coefficients: 0.5 * 0.2 and 0.5 * 1


def test_arc() -> None:
    # n = 4, f = 1: k = floor(2 * 1 * 3 / 4) = 1 row clipped to the 2nd largest norm, 3.
    X = T([[1], [2], [3], [30]])
    close(arc(X, f=1).materialize().flatten(), [1, 2, 3, 3])
    close(build_aggregator("mean", f=1, pre=[{"name": "arc"}])(X).value_D, [9 / 4])


def test_pipeline_nnm_then_krum() -> None:
    # NNM rows: 4/3, 4/3, 4/3, 14/3; Krum (n = 4 needs 2f + 2 < 4: f = 0) keeps one of the
    # three equal rows (ties averaged) -> 4/3, drawing on nodes 0, 1 and 2.
    r = build_aggregator("krum", f=0, pre=[{"name": "nnm", "f": 1}])(T([[0], [1], [3], [10]]))
    close(r.value_D, [4 / 3])
    assert r.selected_N.tolist() == [True, True, True, False]
    close(r.weights_N, [1 / 3, 1 / 3, 1 / 3, 0])


def test_rows_reconstruct_value_for_linear_rules() -> None:
    X = torch.randn(9, 20, generator=torch.Generator().manual_seed(0))
    for name in ["mean", "krum", "multi_krum", "geometric_median", "mda", "dnc", "signguard"]:
        r = get_aggregator(name, f=1)(X)
        torch.testing.assert_close(r.weights_N.float() @ X, r.value_D, atol=1e-5, rtol=1e-5)
    Rows(X)  # constructing Rows does not copy or compute anything
