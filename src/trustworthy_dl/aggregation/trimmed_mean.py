"""Coordinate-wise trimmed mean (Yin, Chen, Kannan, Bartlett, "Byzantine-robust distributed
learning: towards optimal statistical rates", ICML 2018).

Rule: in every coordinate, drop the f largest and the f smallest of the n values and average the
n - 2f that remain.
Tolerance: 2f < n; with at most f bad rows every output coordinate lies in the range of the
honest values of that coordinate.

Computed with a pruned sorting network over column blocks (``_sortnet``). ``weights_N`` is not
used (the rule is unweighted). The reported weights are each node's share of the sampled
coordinates in which it survived the trimming.
"""

from __future__ import annotations

from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation._sortnet import trimmed_mean_coordinates
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult

__all__ = ["trimmed_mean"]


@AGGREGATORS.register("trimmed_mean", "trmean", "trimmedmean")
def trimmed_mean(updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt) -> AggResult:
    """Coordinate-wise mean of the n - 2f middle values; needs 2f < n."""
    rows = as_rows(updates, weights_N, "trimmed_mean")
    n = rows.n
    require(2 * f < n, "trimmed_mean", f=f, n=n, condition="2f < n", stage=rows.stage)
    value, shares, kernel = trimmed_mean_coordinates(rows, f)
    return rows.result(value, shares, shares > 0, {"n": n, "trimmed_each_side": f, "kernel": kernel})
