"""Mean: the (weighted) average of the updates. Not robust: one bad node moves it anywhere.

Rule: ``sum_i w_i x_i`` with the weights normalised to sum to 1 (uniform by default).
Tolerance: none (breakdown point 0). ``f`` is accepted for uniformity and ignored.
It is the baseline every benchmark ratio is measured against; one gemv pass over the data.
"""

from __future__ import annotations

from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult

__all__ = ["mean"]


@AGGREGATORS.register("mean", "average")
def mean(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt = 0) -> AggResult:
    """Weighted mean of the rows; ``weights_N`` are honoured (normalised to sum to 1)."""
    rows = as_rows(updates, weights_N, "mean")
    w = rows.weights
    return rows.result(rows.combine(w), w, w > 0, {"n": rows.n})
