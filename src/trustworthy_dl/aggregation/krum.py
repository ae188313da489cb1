"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine learning with
adversaries: Byzantine tolerant gradient descent", NeurIPS 2017).

Rule: the score of row i is the sum of its squared distances to its n - f - 2 nearest other rows.
Krum returns the row with the lowest score; Multi-Krum averages the m rows with the lowest scores
(m = n - f by default), weighted by ``weights_N``. Exact ties (duplicate rows, e.g. colluding nodes
sending one vector) are shared: Krum averages its tied minimisers, Multi-Krum splits the last
places among the rows tied at the m-th score.
Tolerance: 2f + 2 < n.

All n^2 distances come from one blocked Gram matrix (``_gram``): one GEMM pass over the data,
then one pass to form the output. Rows with non-finite values (or norm above 1e18) are infinitely
far from everyone: they get the worst scores and are never selected while at least
n - f rows are finite. Thanks to the tie rules the result never depends on the order of the nodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.errors import ConfigError

__all__ = ["boundary_shares", "krum", "krum_scores", "multi_krum"]

# Stand-in for +inf distances so that scores stay ordered (a row with fewer far neighbours wins).
_BIG = 1e300


#: Scores this close (relative) count as tied. Mixed rows (NNM) are often few distinct points, whose
#: mathematically equal scores come out of the Gram algebra a few ulps apart, in an order that
#: depends on the order of the nodes; real score differences are many orders above this.
TIE_RTOL = 1e-9


def tied_with(scores_M: Tensor, value: Tensor) -> Tensor:
    """(M,) bool: the scores equal to ``value`` up to :data:`TIE_RTOL` (exactly, for inf)."""
    if not bool(torch.isfinite(value)):
        return scores_M == value
    return (scores_M - value).abs() <= TIE_RTOL * value.abs()


def boundary_shares(scores_M: Tensor, m: int) -> Tensor:
    """(M,) float64 in [0, 1]: 1 for the rows strictly among the m lowest scores; rows tied with the
    m-th lowest share the remaining places equally (so ties never depend on the order of nodes)."""
    thr = torch.sort(scores_M).values[m - 1]
    at = tied_with(scores_M, thr)
    below = (scores_M < thr) & ~at
    frac = (m - int(below.sum())) / max(1, int(at.sum()))
    return below.to(torch.float64) + at.to(torch.float64) * frac


def krum_scores(sq_dists_MM: Tensor, far_M: Tensor, f: int) -> Tensor:
    """(M,) float64 Krum scores: sum of the max(1, M - f - 2) smallest distances to other rows.

    Far rows score +inf; the others count each far neighbour as a huge finite distance.
    """
    m = sq_dists_MM.shape[0]
    k = max(1, m - f - 2)
    if m == 1:
        return torch.zeros(1, dtype=torch.float64, device=sq_dists_MM.device)
    d = sq_dists_MM.clamp_max(_BIG).clone()
    d.fill_diagonal_(float("inf"))
    scores = d.sort(dim=1).values[:, : min(k, m - 1)].sum(1)
    return scores.masked_fill(far_M, float("inf"))


@AGGREGATORS.register("krum")
def krum(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> AggResult:
    """The row with the lowest Krum score (ties averaged); needs 2f + 2 < n."""
    rows = as_rows(updates, weights_N, "krum")
    n = rows.n
    require(2 * f + 2 < n, "krum", f=f, n=n, condition="2f + 2 < n", stage=rows.stage)
    geo = rows.geometry()
    scores = krum_scores(geo.sq_dists(), geo.far, f)
    best = scores.min()
    chosen = tied_with(scores, best) if torch.isfinite(best) else ~geo.far
    e = chosen.to(torch.float64) / chosen.sum()
    info = {"n": n, "chosen": chosen.nonzero().flatten().tolist(), "score": float(best)}
    return rows.result(rows.combine(e), e, chosen, info)


@AGGREGATORS.register("multi_krum", "multikrum", "multi-krum")
def multi_krum(
    updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt, m: PosInt | None = None
) -> AggResult:
    """Weighted mean of the m (default n - f) rows with the lowest Krum scores; needs 2f + 2 < n."""
    rows = as_rows(updates, weights_N, "multi_krum")
    n = rows.n
    require(2 * f + 2 < n, "multi_krum", f=f, n=n, condition="2f + 2 < n", stage=rows.stage)
    m_ = n - f if m is None else m
    if m_ > n:
        raise ConfigError(f"multi_krum: m={m_} exceeds the number of rows n={n}")
    geo = rows.geometry()
    scores = krum_scores(geo.sq_dists(), geo.far, f)
    if not bool(torch.isfinite(scores).sum() >= m_):  # beyond tolerance (> n - m far rows)
        scores = scores.masked_fill(geo.far, float("inf"))
        m_ = max(1, int(torch.isfinite(scores).sum()))
    share = boundary_shares(scores, m_)
    chosen = share > 0
    w = rows.weights * share
    total = float(w.sum())
    e = w / total if total > 0 else share / share.sum()
    info = {"n": n, "m": m_, "chosen": chosen.nonzero().flatten().tolist()}
    return rows.result(rows.combine(e), e, chosen, info)
