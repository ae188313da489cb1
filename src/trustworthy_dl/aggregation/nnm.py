"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing
by mixing: a recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023).

Pre-aggregation rule: replace every row by the (weighted) mean of its n - f nearest rows (itself
included; rows tied with the (n - f)-th nearest share the last places). The output has n rows;
compose it in front of any aggregator.
Tolerance: 2f < n.

The neighbours come from one Gram matrix (``_gram``). The n mixed rows are never materialised: NNM
only records the (n, n) mixing matrix (``_rows``), so NNM + Krum reads the data once for the Gram
matrix and once for the output, where a direct implementation builds an (n, n - f, D) temporary
(ByzFL runs out of memory at n = 32, D = 1.1e7). Rows with non-finite values are nobody's
neighbour (while at most f of them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import PRE_AGGREGATORS

__all__ = ["nnm"]


@PRE_AGGREGATORS.register("nnm", "nearest_neighbour_mixing", "nearest_neighbor_mixing")
def nnm(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> Rows:
    """Rows -> the mean of each row's n - f nearest rows (weighted by the rows' weights)."""
    rows = as_rows(updates, weights_N, "nnm")
    n = rows.n
    require(2 * f < n, "nnm", f=f, n=n, condition="2f < n", stage=rows.stage)
    d2 = rows.geometry().sq_dists()
    k = n - f
    # Membership: 1 for the k - 1 or fewer strictly nearer rows; rows tied with the k-th nearest
    # share the remaining places (duplicate rows, e.g. from colluding nodes, stay order-free).
    thr = torch.sort(d2, dim=1).values[:, k - 1 : k]
    below = d2 < thr
    at = d2 == thr
    frac = (k - below.sum(1, keepdim=True)) / at.sum(1, keepdim=True)
    member = below.to(torch.float64) + at.to(torch.float64) * frac
    w = rows.weights
    C = member * w[None, :]
    tot = C.sum(1, keepdim=True)
    C = torch.where(tot > 0, C / tot.clamp_min(1e-300), member / k)
    return rows.mix(C, w, "nnm")
