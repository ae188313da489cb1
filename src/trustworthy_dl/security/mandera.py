"""Rank-based detection: MANDERA's rank features, 2-means, and a significance test.

MANDERA (Zhu et al. 2022, "MANDERA: Malicious node detection in federated learning via
ranking"): rank every coordinate across the N nodes, describe each node by the mean and the
spread of its ranks, split the nodes into two groups with 2-means and call the smaller group
malicious. Honest nodes are exchangeable, so their features sit in one tight blob; an attack
that shifts (mean shift, ALIE), flips (sign flip, IPM), inflates (scaling, Gaussian noise) or
zeroes its rows moves the Byzantine features away from the blob, together (colluding identical
rows share one rank profile exactly).

The paper always flags one group (:mod:`~trustworthy_dl.security.mandera_paper` reproduces
that rule; it flags 44% of honest node-rounds at N = 100 with no attack). This calibrated
variant flags the smaller group only when the split is significant, with a test derived from N
and the data rather than constants tuned at one N, in the spirit of SigClust (Liu, Hayes,
Nobel, Marron 2008, "Statistical significance of clustering for high-dimension, low-sample size
data"): is the best 2-means split of these N points more separated than the best split of N
points from one Gaussian? The statistic is the split's separation along the
line joining the two centres, S = |mean difference| / pooled within-group standard deviation
(a Fisher discriminant ratio). Splitting one Gaussian in two gives S ~ 2.65 whatever its shape
and scale; a real second group gives more, even a small one (SigClust's cluster index is
dominated by the big group and loses an 80/20 split; S does not). Its null distribution is
simulated once per N: ``null_draws`` sets of N points from an isotropic Gaussian (the most
cleanly splitting shape of the Gaussian family, so the test is conservative for elongated
blobs), clustered the same way; the split is significant when S exceeds their (1 - ``alpha``)
quantile (its tail fitted, see :func:`separation_null`). S is invariant to scale and rotation:
the honest blob's own size and shape (IID or not, large or small d) set its unit, and N how
large a separation chance alone produces.
Within a significant split a node is flagged when it lies beyond the Bayes boundary of the two
groups along that line (equal variances, the group sizes as priors), which keeps the k-means
boundary errors off the honest side.

Identical rank profiles are a group by themselves: honest nodes draw different batches and never
share one, while colluding nodes that send one vector always do (MANDERA's duplicate rule). Such
copies, when fewer than N/2, are flagged outright and the split is then tested on the other
nodes' ranks; otherwise k-means may put the copies inside the honest blob and call an honest
half-blob the smaller group.
Tolerance: fewer than N/2 Byzantine nodes (the smaller group is the malicious one); a group of
exactly N/2 is never flagged.

Memory (``history``, kept by the detector, :mod:`~trustworthy_dl.security.rank_history`): each
round the nodes' rank features, in robust units, are folded into per-node running means, and
the split is made on the round's features and these means together (two more dimensions; the
null simulated in as many). A node whose rank profile strays every round (a non-colluding sign flip of a
noisy gradient) then stands apart from honest nodes that strayed by the luck of one batch. The
means alone are split and tested too (``history_alone``, at alpha / 2, the joint split at alpha):
an honest node's very bad round can stretch the joint split's within-group spread enough to hide
a group that the means alone still separate (N = 16, sign flip x3: 3 of 75 node-rounds missed
without it). Identical copies are found on the round alone, and the rest is then split on the
round alone.

Legend: N nodes, d sampled coordinates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustworthy_dl.aggregation.sharding import reduce_partial
from trustworthy_dl.security import kmeans2
from trustworthy_dl.security.base import DETECTION_METHODS, MAD_SCALE, MethodResult
from trustworthy_dl.security.distance import krum_log_scores
from trustworthy_dl.security.kmeans2 import two_means_batched, two_means_numpy
from trustworthy_dl.security.ranks import rank_features

__all__ = [
    "all_rows_equal",
    "duplicated_rows",
    "mandera",
    "separation",
    "separation_null",
    "two_means",
    "warm_null",
]


def two_means(points_NF: Tensor, *, starts: int = 4, seed: int = 0) -> tuple[Tensor, float]:
    """Best-of-``starts`` k-means++ 2-means (plus a farthest-point start) of a few points.

    Returns labels in {0, 1} (int64, N) and the within-cluster sum of squares; deterministic for a
    given ``seed``. When all points coincide every label is 0. A round's few points on the CPU are
    split in numpy (:func:`~trustworthy_dl.security.kmeans2.two_means_numpy`: the same starts and
    steps, a few microseconds an op instead of torch's ten).
    """
    pts = points_NF.to(torch.float64)
    if pts.device.type == "cpu" and pts.shape[0] * (starts + 1) <= kmeans2._NUMPY_MAX_POINTS:
        labels_np, w = two_means_numpy(pts.detach().numpy(), starts=starts, seed=seed)
        return torch.from_numpy(labels_np), w
    if all_rows_equal(pts):
        return torch.zeros(pts.shape[0], dtype=torch.int64), 0.0
    med_F = pts.median(dim=0).values
    c0 = pts[(pts - med_F).norm(dim=1).argmax()]
    c1 = pts[(pts - c0).norm(dim=1).argmax()]
    g = torch.Generator().manual_seed(seed)
    labels_1N, w_1 = two_means_batched(
        pts[None], starts=starts, generator=g, init_BSF2=torch.stack([c0, c1])[None, None]
    )
    labels_N = labels_1N[0]
    if labels_N[0] == 1:  # canonical labelling: point 0 is in group 0
        labels_N = 1 - labels_N
    return labels_N, float(w_1[0])


def separation(points_BNF: Tensor, labels_BN: Tensor) -> tuple[Tensor, Tensor]:
    """Fisher separation S of each 2-group split and every point's position along it.

    Returns S_B = |m1 - m0| / s_w along the line joining the group centres (s_w: pooled
    within-group standard deviation of the projections) and t_BN, the projections rescaled so
    that group 0's mean is at 0 and group 1's at 1.
    """
    one_BN = labels_BN.to(points_BNF.dtype)
    n1_B, n0_B = one_BN.sum(1), (1 - one_BN).sum(1)
    c1_BF = (points_BNF * one_BN[..., None]).sum(1) / n1_B.clamp(min=1)[:, None]
    c0_BF = (points_BNF * (1 - one_BN)[..., None]).sum(1) / n0_B.clamp(min=1)[:, None]
    u_BF = c1_BF - c0_BF
    gap_B = u_BF.norm(dim=1).clamp(min=1e-300)
    p_BN = ((points_BNF - c0_BF[:, None]) * (u_BF / gap_B[:, None])[:, None]).sum(-1)  # group 0 at 0
    own_BN = one_BN * gap_B[:, None]
    n = points_BNF.shape[1]
    sw_B = ((p_BN - own_BN).square().sum(1) / max(n - 2, 1)).sqrt()
    return gap_B / sw_B.clamp(min=1e-300), p_BN / gap_B[:, None]


def _separation_numpy(pts_NF: np.ndarray, labels_N: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`separation` of one split in numpy: S and t_N."""
    one_N = labels_N.astype(np.float64)
    n1, n0 = one_N.sum(), (1 - one_N).sum()
    c1_F = (pts_NF * one_N[:, None]).sum(0) / max(n1, 1.0)
    c0_F = (pts_NF * (1 - one_N)[:, None]).sum(0) / max(n0, 1.0)
    u_F = c1_F - c0_F
    gap = max(float(np.sqrt(np.square(u_F).sum())), 1e-300)
    p_N = ((pts_NF - c0_F) * (u_F / gap)).sum(-1)  # group 0 at 0
    sw = float(np.sqrt(np.square(p_N - one_N * gap).sum() / max(pts_NF.shape[0] - 2, 1)))
    return gap / max(sw, 1e-300), p_N / gap


@functools.lru_cache(maxsize=64)
def separation_null(n: int, draws: int, alpha: float, dims: int = 2) -> float:
    """The (1 - alpha) quantile of the best 2-means split's separation S of N Gaussian points
    in ``dims`` dimensions.

    The Gaussian is isotropic: an elongated one splits along its long axis with a slightly
    smaller S (the 99.9% quantile at N = 100 is 3.49 isotropic, 3.40 with spreads 1 : 0.3), so
    the isotropic null is the conservative one for every shape. The quantile's tail is
    extrapolated from the ``draws`` simulated splits with an exponential tail above their 90%
    quantile (q90 + mean excess x ln(0.1 / alpha)): S is right-skewed (small N sometimes split
    off one or two points), so a normal fit would be too low, and the tail fit needs 10x fewer
    draws than the empirical quantile. Seeded by N: the same null in every process and round
    (simulated once per (N, draws, dims): every level's quantile comes from the same draws).
    """
    s_B = _null_separations(n, draws, dims)
    if alpha >= 0.1:
        return float(torch.quantile(s_B, 1.0 - alpha))
    q90 = float(torch.quantile(s_B, 0.9))
    excess = float((s_B[s_B > q90] - q90).mean())
    return q90 + excess * math.log(0.1 / alpha)


@functools.lru_cache(maxsize=32)
def _null_separations(n: int, draws: int, dims: int) -> Tensor:
    """The separations S of the best 2-means splits of ``draws`` sets of N isotropic Gaussian
    points in ``dims`` dimensions (seeded by N, draws and dims)."""
    g = torch.Generator().manual_seed(1_000_003 * n + draws + 7_919 * (dims - 2))
    pts_BNF = torch.randn(draws, n, dims, generator=g, dtype=torch.float64)
    labels_BN, _ = two_means_batched(pts_BNF, starts=3, generator=g)
    return separation(pts_BNF, labels_BN)[0]


def warm_null(
    n: int,
    *,
    alpha: float = 1e-2,
    null_draws: int = 2000,
    with_norm: bool = False,
    with_krum: bool = False,
    history: bool = False,
    history_alone: bool = True,
    **_: Any,
) -> None:
    """Simulate (and cache) the null quantiles :func:`mandera` will need for N nodes, ahead of
    the first round (``history``: the detector keeps the rank history; ``_`` takes the method's
    other parameters)."""
    if n >= 3:
        dims = 2 + int(with_norm) + int(with_krum)
        levels = [(dims, alpha)]
        if history:
            levels.append((dims + 2, alpha))
            if history_alone:
                levels.append((2, alpha / 2))
        for d, level in levels:
            separation_null(n, null_draws, level, d)
            separation_null(n, null_draws, 0.5, d)


#: dtypes the small helpers take to numpy (others, e.g. bfloat16, stay in torch)
_NUMPY_FLOATS = (torch.float32, torch.float64)


def duplicated_rows(feats_NF: Tensor, decimals: int = 9) -> Tensor:
    """Bool mask of the rows equal (to ``decimals``) to at least one other row.

    Compares every pair of the N rows (N^2 F values: a few thousand for the N of a round, and
    ~15x faster than ``torch.unique(dim=0)``, which sorts; in numpy on the CPU, same rounding).
    """
    if feats_NF.device.type == "cpu" and feats_NF.dtype in _NUMPY_FLOATS:
        r = np.round(feats_NF.detach().numpy(), decimals)
        return torch.from_numpy((r[:, None] == r[None]).all(-1).sum(1) > 1)
    r_NF = torch.round(feats_NF, decimals=decimals)
    return (r_NF[:, None] == r_NF[None]).all(-1).sum(1) > 1


def all_rows_equal(points_NF: Tensor) -> bool:
    """True when every row equals the first (no split possible)."""
    if points_NF.device.type == "cpu" and points_NF.dtype in _NUMPY_FLOATS:
        a = points_NF.detach().numpy()
        return bool((a == a[:1]).all())
    return bool((points_NF == points_NF[:1]).all())


@DETECTION_METHODS.register("mandera", "ranks")
def mandera(
    x_Nd: Tensor,
    *,
    reference_d: Tensor | None = None,
    alpha: float = 1e-2,
    null_draws: int = 2000,
    starts: int = 4,
    seed: int = 0,
    with_norm: bool = False,
    with_krum: bool = False,
    history_decay: float = 0.8,
    history_alone: bool = True,
    history: Callable[[Tensor], Tensor | None] | None = None,
) -> MethodResult:
    """Flag the smaller 2-means group of rank features when the split is significant.

    Args:
        x_Nd: finite updates on the sampled coordinates.
        reference_d: unused (ranks need no reference); accepted for a uniform signature.
        alpha: the significance level of the split (the chance, per round, that one honest blob
            is called two groups if it were exactly Gaussian; a flat, platykurtic blob splits
            more often). 0.01: on honest Fashion-MNIST gradients (N = 16-100, IID and
            Dirichlet 0.5) no node-round was flagged; 0.001 loses a third of the power on
            small groups (3 sign flippers x3 of 16 nodes: TPR 0.36 -> 0.20).
        null_draws: point sets simulated for the null distribution of the separation.
        starts: k-means++ starts of the observed split (the null draws use 3).
        seed: the observed split's k-means++ starts.
        with_norm: cluster on three features, the two rank features and the log of the update's
            norm, each in units of its robust spread across nodes (1.4826 x MAD): a node whose
            rank profile and norm both stray a little (sign flip x3 of a noisy gradient) stands
            further apart than on either (README: "Stage-1 detection in MANDERA's setting").
        with_krum: also cluster on the log Krum score (the summed squared distances to the
            n - n // 4 - 2 nearest other rows), in the same robust units: a node far from every
            honest neighbourhood (a non-colluding sign flip of a noisy gradient) moves on it by
            3-10 robust spreads where the rank features move by 2-6.
        history_decay: the weight of the past in the per-node running means of the rank
            features (module docstring); read by the detector, which keeps the means and passes
            ``history``. 0: every round on its own.
        history_alone: with a memory, also split the memory's columns alone and test that
            split at level alpha / 2 (a node whose features stray a little every round, e.g. a
            sign flip x3 of a noisy gradient at N = 16, is far from the blob there, while an
            honest node's one bad round, joined with the others' in the joint split, can hide
            it: README, "Stage-1 detection in MANDERA's setting"). Either split flags.
        history: the detector's update of the running means for these rows (takes the round's
            features in robust units, returns the rows' means, or None before any memory);
            None: this round alone.

    Returns:
        flags_N for the nodes beyond the groups' boundary on the smaller group's side when the
        split is significant; scores_N, for those nodes, is the split's S rescaled to 0 at the
        null's median and 1 at its (1 - alpha) quantile (> 1: flagged), 0 for the others.
    """
    del reference_d
    if not 0 < alpha < 0.5 or null_draws < 100 or starts < 1:
        raise ValueError(
            f"mandera needs 0 < alpha < 0.5, null_draws >= 100 and starts >= 1, got {alpha}, {null_draws}, {starts}"
        )
    if not 0 <= history_decay < 1:
        raise ValueError(f"mandera needs 0 <= history_decay < 1, got {history_decay}")
    n = x_Nd.shape[0]
    feats_N2 = rank_features(x_Nd)
    flags_N = torch.zeros(n, dtype=torch.bool)
    scores_N = torch.zeros(n, dtype=torch.float64)
    per_node = {"features": feats_N2}
    info: dict[str, Any] = {}
    # the round's features join the nodes' memory every round, copies or not
    units_N2 = memory_N2 = None
    if history is not None and n >= 3:
        units_N2 = _robust_units(feats_N2)
        memory_N2 = history(units_N2)
    if n < 3 or all_rows_equal(feats_N2):
        return MethodResult(flags_N, scores_N, {"minority": 0}, per_node)
    # Identical rank profiles (colluding identical rows) are a group by themselves: nodes that
    # draw different batches never share one. They are flagged outright when they are fewer
    # than half, and the split is then tested on the others (MANDERA's duplicate rule, kept
    # from deciding for honest nodes that k-means puts next to the copies).
    dup_N = duplicated_rows(feats_N2)
    copies = int(dup_N.sum())
    if copies > 0 and 2 * copies < n:
        rest = torch.nonzero(~dup_N).flatten()
        sub = mandera(
            x_Nd[rest],
            alpha=alpha,
            null_draws=null_draws,
            starts=starts,
            seed=seed,
            with_norm=with_norm,
            with_krum=with_krum,
        )
        flags_N[rest], scores_N[rest] = sub.flags_N, sub.scores_N
        flags_N[dup_N], scores_N[dup_N] = True, math.inf
        info.update(duplicates=torch.nonzero(dup_N).flatten().tolist(), rest=sub.info)
        return MethodResult(flags_N, scores_N, info, per_node)
    pts_NF = feats_N2  # the points that are split
    extra = []
    if with_norm:
        extra.append(reduce_partial(x_Nd.double().square().sum(dim=1)).clamp(min=1e-300).log() / 2)
    if with_krum:
        extra.append(krum_log_scores(x_Nd))
    if extra or memory_N2 is not None:
        cols = [torch.stack(extra, dim=1)] if extra else []
        if memory_N2 is not None:
            cols.append(memory_N2)
            info["history"] = True
        # robust units are per column: the rank features' were taken for the memory already
        units = units_N2 if units_N2 is not None else _robust_units(feats_N2)
        pts_NF = torch.cat([units, _robust_units(torch.cat(cols, dim=1))], dim=1)
    pts = pts_NF.detach().cpu().numpy()
    tests = [("", pts, alpha)]
    if memory_N2 is not None and history_alone:  # the memory's two columns alone, at alpha / 2
        tests.append(("history_", pts[:, -2:], alpha / 2))
    flags_np, scores_np = np.zeros(n, dtype=bool), np.zeros(n)
    info["minority"] = 0
    for prefix, points, level in tests:
        split = _split_test(points, alpha=level, null_draws=null_draws, starts=starts, seed=seed)
        if split is None:
            continue
        beyond_N, score, split_info = split
        scores_np = np.where(beyond_N, np.maximum(scores_np, score), scores_np)
        flags_np |= beyond_N & (score > 1.0)
        info.update({prefix + k: v for k, v in split_info.items()})
    return MethodResult(torch.from_numpy(flags_np), torch.from_numpy(scores_np), info, per_node)


def _split_test(
    pts_NF: np.ndarray, *, alpha: float, null_draws: int, starts: int, seed: int
) -> tuple[np.ndarray, float, dict[str, Any]] | None:
    """The best 2-means split of the points and its test: (the nodes beyond the groups' boundary
    on the smaller group's side, the split's score, its diagnostics), None without a smaller group.

    The score is the separation S rescaled to 0 at the null's median and 1 at its (1 - alpha)
    quantile (> 1: significant).
    """
    n = pts_NF.shape[0]
    labels_N, _ = two_means_numpy(pts_NF, starts=starts, seed=seed)
    ones = int(labels_N.sum())
    if 2 * ones == n or ones in (0, n):
        return None
    if 2 * ones > n:  # label 1 = the smaller group
        labels_N = 1 - labels_N
    dims = int(pts_NF.shape[1])
    bound = separation_null(n, null_draws, alpha, dims)
    typical = separation_null(n, null_draws, 0.5, dims)  # the null's median
    sep, t_N = _separation_numpy(pts_NF, labels_N)
    score = max(sep - typical, 0.0) / max(bound - typical, 1e-12)
    # Bayes boundary between the groups along the separating line (t: 0 = majority mean,
    # 1 = minority mean; equal variances, group sizes as priors)
    m = min(ones, n - ones)
    boundary = 0.5 + math.log((n - m) / m) / max(sep, 1e-12) ** 2
    split_info = {
        "minority": m,
        "separation": round(sep, 4),
        "bound": round(bound, 4),
        "null_median": round(typical, 4),
    }
    return t_N > boundary, score, split_info


def _robust_units(raw_NF: Tensor) -> Tensor:
    """Each column centred on its median and divided by its robust spread (1.4826 x MAD).

    In numpy for a few dozen finite float64 values (bit for bit the torch formula up to the sign of
    a zero: ``torch.median`` is the lower middle value, so is this); other inputs take the torch ops.
    """
    if raw_NF.dtype != torch.float64 or raw_NF.device.type != "cpu" or not bool(torch.isfinite(raw_NF).all()):
        centre_F = raw_NF.median(dim=0).values
        spread_F = MAD_SCALE * (raw_NF - centre_F).abs().median(dim=0).values
        return (raw_NF - centre_F) / spread_F.clamp(min=1e-12)
    a = raw_NF.numpy()
    mid = (a.shape[0] - 1) // 2
    centre_F = np.sort(a, axis=0)[mid]
    dev_NF = a - centre_F
    spread_F = MAD_SCALE * np.sort(np.abs(dev_NF), axis=0)[mid]
    return torch.from_numpy(dev_NF / np.maximum(spread_F, 1e-12))
