"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The hidden vulnerability of distributed learning in
Byzantium", ICML 2018).

Rule: (1) select theta = n - 2f rows by repeating Krum: pick the row with the lowest Krum score
among the remaining ones (counting max(1, r - f - 2) neighbours in a pool of r; ties go to the
row with the smaller sum of squared distances to the pool), remove it, repeat; (2) in every
coordinate, average the beta = theta - 2f selected values closest to their median (when several
sets of beta values are equally close, their means are averaged).
Tolerance: n >= 4f + 3.

Stage 1 uses the Gram matrix (``_gram``, O(n^2) per round of selection after one pass over the
data); stage 2 runs a sorting network over column blocks of the selected rows (``_sortnet``).
``weights_N`` is not used. The reported weights are each node's share of the sampled coordinates
in which it was among the beta values kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation._sortnet import bulyan_coordinates
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.aggregation.krum import krum_scores, tied_with

__all__ = ["bulyan", "iterated_krum"]


def iterated_krum(sq_dists_MM: Tensor, far_M: Tensor, f: int, theta: int) -> Tensor:
    """(M,) bool: the theta rows chosen by repeated Krum (lowest score, then remove it).

    Late in the recursion the pool is small and Krum counts a single neighbour, so the two rows
    of the closest pair tie; ties go to the row with the smaller sum of squared distances to the
    pool (then the lower index), which keeps the choice independent of the order of the nodes.
    """
    m = sq_dists_MM.shape[0]
    pool = list(range(m))
    chosen = torch.zeros(m, dtype=torch.bool, device=sq_dists_MM.device)
    d_all = sq_dists_MM.clamp_max(1e300)
    for _ in range(theta):
        idx = torch.tensor(pool, device=sq_dists_MM.device)
        sub = d_all.index_select(0, idx).index_select(1, idx)
        scores = krum_scores(sub, far_M[idx], f)
        tied = tied_with(scores, scores.min())
        if int(tied.sum()) > 1:
            second = sub.sum(1).masked_fill(~tied, float("inf"))
            pick = int(tied_with(second, second.min()).nonzero()[0])  # near-equal sums: the lower index
        else:
            pick = int(torch.argmin(scores))
        best = pool[pick]
        chosen[best] = True
        pool.remove(best)
    return chosen


@AGGREGATORS.register("bulyan")
def bulyan(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> AggResult:
    """Iterated Krum then a coordinate-wise trimmed mean around the median; needs n >= 4f + 3."""
    rows = as_rows(updates, weights_N, "bulyan")
    n = rows.n
    require(n >= 4 * f + 3, "bulyan", f=f, n=n, condition="n >= 4f + 3", stage=rows.stage)
    theta, beta = n - 2 * f, n - 4 * f
    geo = rows.geometry()
    chosen = iterated_krum(geo.sq_dists(), geo.far, f, theta)
    value, shares_sel = bulyan_coordinates(rows, chosen, beta)
    shares = torch.zeros(n, dtype=torch.float64, device=shares_sel.device)
    shares[chosen] = shares_sel
    info = {"n": n, "theta": theta, "beta": beta, "chosen": chosen.nonzero().flatten().tolist()}
    return rows.result(value, shares, chosen, info)
