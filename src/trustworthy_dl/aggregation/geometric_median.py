"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade, Harchaoui,
"Robust aggregation for federated learning", IEEE TSP 2022; Weiszfeld, Tohoku Math. J. 1937).

Rule: ``z = argmin_z sum_i w_i max(nu, |z - x_i|)``, found by the iteration
``z <- sum_i beta_i x_i / sum_i beta_i`` with ``beta_i = w_i / max(nu, |z - x_i|)``, starting at
the weighted mean of the finite rows and stopping after ``iterations`` steps or when the objective
improves by less than ``tol`` (relative).
Tolerance: 2f < n (breakdown point 1/2).

Every iterate is a combination ``z = sum_j c_j x_j``, so its distances to the rows follow from the
Gram matrix (``_gram``): the iterations cost O(n^2) each and never touch the (n, D) data; the data
is read once for the Gram matrix and once for the output. ``weights_N`` are honoured (the w_i).
Rows with non-finite values get weight 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosFloat, PosInt, Range, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.errors import NodeMessageError

__all__ = ["geometric_median", "weiszfeld"]


def weiszfeld(
    geo_dists_to, alpha_M: Tensor, *, iterations: int, nu: float, tol: float
) -> tuple[Tensor, int, float]:
    """Smoothed Weiszfeld on coefficients. ``geo_dists_to(c)`` gives squared distances to ``c @ rows``.

    Returns (coefficients c_M summing to 1, iterations run, final objective).
    """
    c = alpha_M.clone()
    obj_prev = float("inf")
    obj = obj_prev
    it = 0
    live = alpha_M > 0
    for it in range(1, iterations + 1):  # noqa: B007
        d = geo_dists_to(c).sqrt()
        dd = d.clamp_min(nu)
        obj = float((alpha_M[live] * dd[live]).sum())
        beta = torch.where(live, alpha_M / dd, 0.0)
        c = beta / beta.sum()
        if obj_prev - obj <= tol * obj:
            break
        obj_prev = obj
    return c, it, obj


@AGGREGATORS.register("geometric_median", "geomed", "rfa", "gm")
def geometric_median(
    updates: Tensor | Rows,
    weights_N: Tensor | None = None,
    *,
    f: NonNegInt,
    iterations: PosInt = 100,
    nu: PosFloat = 1e-6,
    tol: Annotated[float, Range(ge=0)] = 1e-7,
) -> AggResult:
    """Smoothed-Weiszfeld geometric median; needs 2f < n."""
    rows = as_rows(updates, weights_N, "geometric_median")
    n = rows.n
    require(2 * f < n, "geometric_median", f=f, n=n, condition="2f < n", stage=rows.stage)
    geo = rows.geometry()
    alpha = rows.weights.masked_fill(geo.far, 0.0)
    if float(alpha.sum()) <= 0:
        raise NodeMessageError("geometric_median: every update is non-finite (or has zero weight)")
    alpha = alpha / alpha.sum()
    c, its, obj = weiszfeld(geo.sq_dists_to, alpha, iterations=iterations, nu=nu, tol=tol)
    info = {"n": n, "iterations": its, "objective": obj}
    return rows.result(rows.combine(c), c, c > 0, info)
