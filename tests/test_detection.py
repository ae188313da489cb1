"""Stage-1 detection: ranks, MANDERA, distance scores and the combined detector."""

from __future__ import annotations

import math

import pytest
import torch

from trustworthy_dl.errors import UnknownNameError
from trustworthy_dl.security import (
    DETECTION_METHODS,
    Stage1Detector,
    average_ranks,
    distance,
    mandera,
    rank_features,
    two_means,
)
from trustworthy_dl.security.base import finite_rows, robust_z, sample_coords

N, F, D = 16, 4, 2000


def honest(seed: int, *, n: int = N, d: int = D, het: float = 0.0) -> torch.Tensor:
    """Honest-looking rows: a shared mean plus per-node noise; ``het`` adds per-node scale and shift."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g) * 0.5
    scale = 1 + het * (torch.rand(n, 1, generator=g) * 2 - 1)
    shift = het * 0.3 * torch.randn(n, d, generator=g)
    return mu + scale * torch.randn(n, d, generator=g) + shift


def attacked(seed: int, kind: str) -> torch.Tensor:
    x = honest(seed)
    mu, sd = x[F:].mean(0), x[F:].std(0)
    g = torch.Generator().manual_seed(seed + 10_000)
    if kind == "gaussian":
        x[:F] = torch.randn(F, D, generator=g) * 20
    elif kind == "sign_flip":
        x[:F] = -x[:F]
    elif kind == "scaling":
        x[:F] = 10 * x[:F]
    elif kind == "zero":
        x[:F] = 0
    elif kind == "mean_shift":
        x[:F] = mu + 1.5 * sd
    elif kind == "alie":  # colluding: one shared vector
        x[:F] = mu - 0.5 * sd
    else:
        raise ValueError(kind)
    return x


# ----------------------------------------------------------------------------- ranks


def test_average_ranks_hand_computed_with_ties():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, 5.0], [3.0, 1.0]])
    r = average_ranks(x)
    # column 0: 1 -> 1, 2 -> 2, the two 3s share ranks 3 and 4 -> 3.5; column 1: three 1s -> 2
    assert r.tolist() == [[3.5, 2.0], [1.0, 2.0], [2.0, 4.0], [3.5, 2.0]]


def test_average_ranks_columns_sum_and_argsort_agreement():
    x = torch.randn(9, 50)
    r = average_ranks(x)
    assert torch.allclose(r.sum(0), torch.full((50,), 9 * 10 / 2))
    assert torch.equal(r, (x.argsort(0).argsort(0) + 1).float())  # no ties: plain ranks


@pytest.mark.parametrize("n", [5, 40])  # pairwise-sign path and sort path
def test_average_ranks_match_brute_force(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(0, 6, (n, 300), generator=g).float()  # many ties
    x[1] = x[0]
    less = (x.unsqueeze(0) < x.unsqueeze(1)).sum(1)
    equal = (x.unsqueeze(0) == x.unsqueeze(1)).sum(1)
    assert torch.equal(average_ranks(x), less + (equal + 1) / 2)


def test_rank_features_zero_for_exchangeable_extremes():
    x = torch.randn(8, 10_000)
    f = rank_features(x)
    assert f.abs().max() < 0.05
    x[0] = 1e3  # always the top rank: mean rank far above centre, no spread
    f = rank_features(x)
    assert f[0, 0] > 1.5 and f[0, 1] == pytest.approx(-1.0)


def test_two_means_is_deterministic_and_splits_groups():
    p = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]], dtype=torch.float64)
    labels = two_means(p)
    assert labels[:3].unique().numel() == 1 and labels[3:].unique().numel() == 1 and labels[0] != labels[3]
    assert torch.equal(labels, two_means(p))
    assert two_means(torch.zeros(4, 2)).sum() == 0  # coincident points: one group


# ----------------------------------------------------------------------------- MANDERA


@pytest.mark.parametrize("kind", ["gaussian", "scaling", "zero", "mean_shift", "alie"])
def test_mandera_flags_shifted_group(kind):
    for seed in range(5):
        res = mandera(attacked(seed, kind))
        assert res.flags_N[:F].all(), (kind, seed, res.info)
        assert not res.flags_N[F:].any()


@pytest.mark.parametrize("het", [0.0, 0.3])
def test_mandera_flags_nobody_on_honest_rows(het):
    flags = sum(int(mandera(honest(seed, het=het)).flags_N.sum()) for seed in range(200))
    assert flags == 0  # 0 of 3200 node-rounds


def test_mandera_never_flags_half():
    x = honest(0, n=8)
    x[:4] += 10.0  # two equal groups: no honest majority to tell which one is malicious
    assert not mandera(x).flags_N.any()


# ----------------------------------------------------------------------------- distance


@pytest.mark.parametrize("kind", ["gaussian", "sign_flip", "scaling", "zero", "mean_shift", "alie"])
def test_distance_catches_attacks(kind):
    for seed in range(5):
        res = distance(attacked(seed, kind))
        assert res.flags_N[:F].all(), (kind, seed)
        assert not res.flags_N[F:].any(), (kind, seed)


@pytest.mark.parametrize("het", [0.0, 0.3])
def test_distance_flags_nobody_on_honest_rows(het):
    flags = sum(int(distance(honest(seed, het=het)).flags_N.sum()) for seed in range(100))
    assert flags == 0  # 0 of 1600 node-rounds


def test_distance_collusion_catches_identical_rows_alone():
    x = honest(1)
    x[:3] = x[5] + 0.0  # three copies of an honest-looking row
    res = distance(x, scores=["collusion"])
    assert res.flags_N[:3].all() and res.flags_N[5]  # the original is indistinguishable from its copies
    assert int(res.flags_N.sum()) == 4


def test_distance_validates_names():
    with pytest.raises(ValueError, match="valid: cosine"):
        distance(honest(0), scores=["cosin"])
    with pytest.raises(ValueError, match="> 0"):
        distance(honest(0), thresholds={"norm": 0.0})


def test_robust_z_floor_and_sides():
    v = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    assert robust_z(v, floor=0.5, side="high").tolist() == [0, 0, 0, 0, 2.0]
    assert robust_z(v, floor=0.5, side="low").tolist() == [0, 0, 0, 0, 0]
    pop = torch.tensor([True, True, True, False, False])
    assert robust_z(v, floor=0.5, population_N=pop)[4] == 2.0


# ----------------------------------------------------------------------------- detector


def test_detector_nonfinite_rows_flagged_with_full_evidence():
    x = honest(0)
    x[2, 7] = float("nan")
    x[9, 0] = float("inf")
    res = Stage1Detector().inspect(x)
    assert res.info["nonfinite"] == [2, 9]
    assert res.flags_N[[2, 9]].all() and res.evidence_N[[2, 9]].tolist() == [1.0, 1.0]
    assert math.isinf(res.scores_N[2]) and int(res.flags_N.sum()) == 2
    assert finite_rows(x).sum() == N - 2


def test_detector_degenerate_inputs():
    det = Stage1Detector()
    assert det.inspect(torch.full((4, 10), float("nan"))).flags_N.all()
    assert not det.inspect(torch.randn(2, 10)).flags_N.any()  # two rows: nobody can be told apart
    assert not det.inspect(torch.zeros(6, 10)).flags_N.any()  # all identical: no majority to deviate from
    with pytest.raises(ValueError, match="\\(N, D\\)"):
        det.inspect(torch.randn(10))


def test_detector_combination_rules():
    x = attacked(0, "sign_flip")  # distance catches it; ranks of a sign flip stay central
    any_ = Stage1Detector(combine="any").inspect(x)
    all_ = Stage1Detector(combine="all").inspect(x)
    only_m = Stage1Detector(methods=["mandera"]).inspect(x)
    assert any_.flags_N[:F].all()
    assert torch.equal(all_.flags_N, any_.flags_N & only_m.flags_N)
    assert torch.equal(any_.evidence_N, any_.flags_N.double())
    assert set(any_.info["flagged_by"]) == {"mandera", "distance"}


def test_detector_subset_is_seeded_and_catches_attack():
    x = attacked(3, "scaling")
    det = Stage1Detector(num_coords=500)
    a = det.inspect(x, generator=torch.Generator().manual_seed(7))
    b = det.inspect(x, generator=torch.Generator().manual_seed(7))
    assert a.info["num_coords"] == 500
    assert torch.equal(a.scores_N, b.scores_N) and a.flags_N[:F].all() and not a.flags_N[F:].any()


def test_detector_with_reference_and_errors():
    x = attacked(2, "sign_flip")
    res = Stage1Detector(methods=["distance"]).inspect(x, reference_D=x[F:].mean(0))
    assert res.flags_N[:F].all()
    with pytest.raises(UnknownNameError, match="valid: distance, mandera"):
        Stage1Detector(methods=["krumm"])
    with pytest.raises(ValueError, match="combine"):
        Stage1Detector(combine="most")
    with pytest.raises(ValueError, match="not in use"):
        Stage1Detector(methods=["mandera"], params={"distance": {}})
    assert "mandera" in DETECTION_METHODS and "ranks" in DETECTION_METHODS


def test_sample_coords():
    g = torch.Generator().manual_seed(0)
    assert sample_coords(100, None, g) is None and sample_coords(100, 100, g) is None
    idx = sample_coords(100, 30, g)
    assert idx is not None and idx.numel() == 30 and idx.unique().numel() == 30
    big = sample_coords(10**7, 1000, g)
    assert big is not None and bool((big[1:] >= big[:-1]).all()) and int(big.max()) < 10**7
