"""Coordinate-wise median (Yin, Chen, Kannan, Bartlett, "Byzantine-robust distributed learning:
towards optimal statistical rates", ICML 2018).

Rule: every coordinate of the output is the median of that coordinate over the n rows (the mean
of the two middle values when n is even).
Tolerance: 2f < n (breakdown point 1/2); with at most f bad rows every output coordinate lies in
the range of the honest values of that coordinate.

Computed with a pruned sorting network over column blocks (``_sortnet``), not ``torch.median``
(10-20x faster on CPU). ``weights_N`` is not used (the rule is unweighted). The reported weights
are each node's share of the sampled coordinates in which it was a middle value.
"""

from __future__ import annotations

from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation._sortnet import coordinate_median
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult

__all__ = ["median"]


@AGGREGATORS.register("median", "coordinate_median", "cwmed")
def median(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> AggResult:
    """Coordinate-wise median; needs 2f < n."""
    rows = as_rows(updates, weights_N, "median")
    n = rows.n
    require(2 * f < n, "median", f=f, n=n, condition="2f < n", stage=rows.stage)
    value, shares, kernel = coordinate_median(rows)
    return rows.result(value, shares, shares > 0, {"n": n, "kernel": kernel})
