"""Norm clipping pre-aggregators: static clipping and adaptive robust clipping, ARC (Allouah,
Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The vital role of gradient clipping in
Byzantine-resilient distributed learning", 2024, arXiv:2405.14432).

* ``clip`` (static). Rule: ``x_i <- x_i * min(1, c / |x_i|)``. Tolerance: none of its own.
* ``arc``. Rule: with k = floor(2 (f / n) (n - f)), clip the k rows of largest norm to the norm of
  the (k + 1)-th largest. Tolerance: 2f < n.

Both only scale rows, so they record a diagonal mixing matrix (``_rows``) and read the data once
for the norms (or reuse the Gram matrix of an earlier stage). The weights of the result are then
coefficients: a clipped node's weight shrinks with its scale, and ``1 - sum(weights_N)`` is the
shrinkage towards zero. Rows with non-finite values stay as they are (there is no direction to
clip them along); the next stage treats them as infinitely far.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosFloat, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import PRE_AGGREGATORS

__all__ = ["arc", "clip"]


def _scaled(rows: Rows, scale_M: Tensor, stage: str) -> Rows:
    return rows.mix(torch.diag(scale_M), rows.weights, stage)


@PRE_AGGREGATORS.register("clip", "clipping", "static_clip", "static_clipping")
def clip(
    updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt = 0, c: PosFloat = 2.0
) -> Rows:
    """Scale every row to norm at most ``c``."""
    rows = as_rows(updates, weights_N, "clip")
    norms = rows.sq_norms().sqrt()
    scale = torch.where(torch.isfinite(norms) & (norms > c), c / norms, 1.0)
    return _scaled(rows, scale, f"clip(c={c})")


@PRE_AGGREGATORS.register("arc", "adaptive_clipping", "adaptive_robust_clipping")
def arc(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> Rows:
    """Clip the floor(2 f (n - f) / n) largest rows to the next largest norm; needs 2f < n."""
    rows = as_rows(updates, weights_N, "arc")
    n = rows.n
    require(2 * f < n, "arc", f=f, n=n, condition="2f < n", stage=rows.stage)
    k = math.floor(2 * f * (n - f) / n)
    norms = rows.sq_norms().sqrt()
    if k == 0:
        return _scaled(rows, torch.ones_like(norms), "arc")
    desc = torch.sort(norms, descending=True).values
    thr = float(desc[k])
    scale = torch.where(torch.isfinite(norms) & (norms > thr), thr / norms, 1.0)
    return _scaled(rows, scale, "arc")
