"""Batched 2-means (Lloyd) with k-means++ starts, for the rank-feature detectors.

One call clusters B point sets of N points each at once (the observed features and the null
draws of the significance test share the code), with S starts per set; the split of lowest
within-cluster sum of squares is kept. Deterministic for a given generator.

Legend: B point sets, S starts, N points, F features.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from trustworthy_dl.security._native_kmeans import MAX_FEATURES, lloyd_kernel

__all__ = ["two_means_batched", "two_means_numpy"]


def _kmeanspp_pairs(points_BNF: Tensor, starts: int, generator: torch.Generator) -> Tensor:
    """(B, S, 2, F) starting centres: a uniform first centre, the second with probability ~ d^2."""
    b, n, _ = points_BNF.shape
    first_BS = torch.randint(n, (b, starts), generator=generator)
    c0_BSF = torch.gather(points_BNF, 1, first_BS[..., None].expand(-1, -1, points_BNF.shape[2]))
    d2_BSN = (points_BNF[:, None] - c0_BSF[:, :, None]).square().sum(-1)
    w_BSN = d2_BSN + 1e-300  # all points coincide: any second centre
    second_BS = torch.multinomial(w_BSN.reshape(b * starts, n), 1, generator=generator).reshape(b, starts)
    c1_BSF = torch.gather(points_BNF, 1, second_BS[..., None].expand(-1, -1, points_BNF.shape[2]))
    return torch.stack([c0_BSF, c1_BSF], dim=2)


def _kmeanspp_pairs_numpy(pts_NF: np.ndarray, starts: int, seed: int) -> np.ndarray:
    """:func:`_kmeanspp_pairs` for one point set in numpy, (S, 2, F): the draws of a torch generator
    seeded with ``seed`` (:func:`_kmeanspp_draws`), so the same centres."""
    first_S, q_SN = _kmeanspp_draws(seed, pts_NF.shape[0], starts)
    c0_SF = pts_NF[first_S]
    w_SN = np.square(pts_NF[None] - c0_SF[:, None]).sum(-1) + 1e-300
    second_S = np.argmax(w_SN / q_SN, axis=1)  # torch.multinomial(w_SN, 1) on those draws
    return np.stack([c0_SF, pts_NF[second_S]], axis=1)


@functools.lru_cache(maxsize=256)
def _kmeanspp_draws(seed: int, n: int, starts: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_kmeanspp_pairs` draws from a generator seeded with ``seed`` for S starts of N
    points: the first centres (S,) and the exponential variates q (S, N) with which
    ``torch.multinomial(w, 1)`` picks ``argmax(w / q)`` (its sampling without replacement; a test
    checks the two agree). They depend on (seed, N, S) only: a round's split reuses them instead of
    four torch calls, which cost tens of microseconds each with the caches cold after the nodes'
    gradients."""
    g = torch.Generator().manual_seed(seed)
    first_S = torch.randint(n, (1, starts), generator=g).numpy()[0]
    q_SN = torch.empty(starts, n, dtype=torch.float64).exponential_(1, generator=g).numpy()
    first_S.setflags(write=False)
    q_SN.setflags(write=False)
    return first_S, q_SN


def two_means_numpy(
    pts_NF: np.ndarray, *, starts: int, seed: int, iters: int = 30
) -> tuple[np.ndarray, float]:
    """Best-of-``starts`` k-means++ 2-means of one small float64 point set, plus a farthest-point
    start (from the median, then from that point), in numpy: labels (int64, N; point 0 in group 0)
    and the within-cluster sum of squares. Coincident points: every label 0.

    The starts are those a torch generator seeded with ``seed`` draws, as in the torch path.
    """
    n = pts_NF.shape[0]
    if bool((pts_NF == pts_NF[:1]).all()):
        return np.zeros(n, dtype=np.int64), 0.0
    med_F = np.sort(pts_NF, axis=0)[(n - 1) // 2]  # torch.median's lower middle value
    c0_F = pts_NF[np.square(pts_NF - med_F).sum(1).argmax()]
    c1_F = pts_NF[np.square(pts_NF - c0_F).sum(1).argmax()]
    centres_S2F = np.concatenate([_kmeanspp_pairs_numpy(pts_NF, starts, seed), np.stack([c0_F, c1_F])[None]])
    kernel = _lloyd_kernel() if pts_NF.shape[1] <= MAX_FEATURES else None
    if kernel is not None:  # one call instead of a dozen numpy ops a step (module _native_kmeans)
        labels_N, w = kernel(pts_NF, centres_S2F, iters)
    else:
        labels_1N, w_1 = _lloyd_numpy(pts_NF[None], centres_S2F[None], iters)
        labels_N, w = labels_1N[0], float(w_1[0])
    if labels_N[0] == 1:  # canonical labelling: point 0 is in group 0
        labels_N = 1 - labels_N
    return labels_N, w


@functools.cache
def _lloyd_kernel() -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, float]] | None:
    return lloyd_kernel()


#: Up to this many (set, start, point) triples the Lloyd iterations run in numpy: each of its ops on
#: a few dozen values costs ~1 us against torch's ~5 us, and the observed split of a round (5 starts
#: of N points) is ~15 such ops per iteration. The null draws (thousands of sets) stay in torch.
#: Same steps, so the same split, except that sums may round differently in the last bit: when two
#: starts end in splits of equal inertia (ties, e.g. rounded points) either may be kept (tested).
_NUMPY_MAX_POINTS = 4096


def _lloyd_numpy(pts_BNF: np.ndarray, centres_BS2F: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`two_means_batched`'s Lloyd iterations and choice of start, the same steps in numpy."""
    b, n, f = pts_BNF.shape
    s = centres_BS2F.shape[1]
    pts_BSNF = np.broadcast_to(pts_BNF[:, None], (b, s, n, f))
    total_BSF = pts_BSNF.sum(2)
    labels_BSN = np.zeros((b, s, n), dtype=np.int64)
    c0, c1 = centres_BS2F[:, :, 0], centres_BS2F[:, :, 1]
    for it in range(iters):
        cut_BS = (np.square(c1).sum(-1) - np.square(c0).sum(-1)) * 0.5
        new_BSN = (np.einsum("bsnf,bsf->bsn", pts_BSNF, c1 - c0) > cut_BS[..., None]).astype(np.int64)
        if it > 0 and np.array_equal(new_BSN, labels_BSN):
            break
        labels_BSN = new_BSN
        one_BSN = labels_BSN.astype(pts_BNF.dtype)
        n1_BS1 = one_BSN.sum(2, keepdims=True)
        sum1_BSF = np.einsum("bsnf,bsn->bsf", pts_BSNF, one_BSN)
        c0 = np.where(n1_BS1 < n, (total_BSF - sum1_BSF) / np.maximum(n - n1_BS1, 1), c0)
        c1 = np.where(n1_BS1 > 0, sum1_BSF / np.maximum(n1_BS1, 1), c1)
    own_BSNF = np.where(labels_BSN[..., None].astype(bool), c1[:, :, None], c0[:, :, None])
    w_BS = np.square(pts_BSNF - own_BSNF).sum((-1, -2))
    best_B = w_BS.argmin(axis=1)
    return labels_BSN[np.arange(b), best_B], w_BS[np.arange(b), best_B]


def two_means_batched(
    points_BNF: Tensor,
    *,
    starts: int,
    generator: torch.Generator,
    iters: int = 30,
    init_BSF2: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Best-of-``starts`` 2-means of every point set.

    Args:
        points_BNF: float64 points.
        starts: k-means++ starts per set.
        generator: draws the starts.
        iters: Lloyd iterations at most (stops early once no label changes).
        init_BSF2: optional extra starting centre pairs (B, S', 2, F), tried besides the random ones.

    Returns:
        labels_BN (int64 in {0, 1}) and the within-cluster sum of squares W_B of the kept split.
    """
    b, n, f = points_BNF.shape
    centres_BS2F = _kmeanspp_pairs(points_BNF, starts, generator)
    if init_BSF2 is not None:
        centres_BS2F = torch.cat([centres_BS2F, init_BSF2], dim=1)
    if b * centres_BS2F.shape[1] * n <= _NUMPY_MAX_POINTS:  # one round's split: numpy's small ops
        labels_np, w_np = _lloyd_numpy(
            points_BNF.detach().cpu().numpy(), centres_BS2F.detach().cpu().numpy(), iters
        )
        dev = points_BNF.device
        return torch.from_numpy(labels_np).to(dev), torch.from_numpy(w_np).to(dev)
    s = centres_BS2F.shape[1]
    pts_BSNF = points_BNF[:, None].expand(b, s, n, f)
    total_BSF = pts_BSNF.sum(2)
    labels_BSN = torch.zeros(b, s, n, dtype=torch.int64)
    for it in range(iters):
        # nearer to c1 than to c0  <=>  x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2
        c0, c1 = centres_BS2F[:, :, 0], centres_BS2F[:, :, 1]
        cut_BS = (c1.square().sum(-1) - c0.square().sum(-1)) * 0.5
        new_BSN = (torch.einsum("bsnf,bsf->bsn", pts_BSNF, c1 - c0) > cut_BS[..., None]).long()
        if it > 0 and torch.equal(new_BSN, labels_BSN):
            break
        labels_BSN = new_BSN
        one_BSN = labels_BSN.to(points_BNF.dtype)
        n1_BS1 = one_BSN.sum(2, keepdim=True)
        sum1_BSF = torch.einsum("bsnf,bsn->bsf", pts_BSNF, one_BSN)
        # an emptied cluster keeps its centre (it can only win points back)
        c0 = torch.where(n1_BS1 < n, (total_BSF - sum1_BSF) / (n - n1_BS1).clamp(min=1), c0)
        c1 = torch.where(n1_BS1 > 0, sum1_BSF / n1_BS1.clamp(min=1), c1)
        centres_BS2F = torch.stack([c0, c1], dim=2)
    own_BSNF = torch.where(labels_BSN[..., None].bool(), centres_BS2F[:, :, 1:2], centres_BS2F[:, :, 0:1])
    w_BS = (pts_BSNF - own_BSNF).square().sum((-1, -2))
    best_B = w_BS.argmin(dim=1)
    labels_BN = labels_BSN[torch.arange(b), best_B]
    return labels_BN, w_BS[torch.arange(b), best_B]
