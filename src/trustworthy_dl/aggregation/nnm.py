"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing
by mixing: a recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023).

Pre-aggregation rule: replace every row by the (weighted) mean of its n - f nearest rows (itself
included). The output has n rows; compose it in front of any aggregator.
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
    idx = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    w = rows.weights
    C = torch.zeros(n, n, dtype=torch.float64, device=w.device)
    C.scatter_(1, idx, w[idx])
    tot = C.sum(1, keepdim=True)
    uniform = torch.zeros_like(C).scatter_(1, idx, 1.0 / k)
    C = torch.where(tot > 0, C / tot.clamp_min(1e-300), uniform)
    return rows.mix(C, w, "nnm")
