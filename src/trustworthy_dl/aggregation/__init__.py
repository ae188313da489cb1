"""Robust aggregation: rules over an (N, D) stack of node updates, registered by name.

::

    agg = get_aggregator("krum", f=2)                       # or build_aggregator(name, f=, params=, pre=)
    res = agg(updates_ND)                                   # AggResult(value_D, weights_N, selected_N, info)
    agg = build_aggregator("median", f=2, pre=[{"name": "nnm"}, {"name": "bucketing", "s": 2}])

Aggregators: mean, median, trimmed_mean, geometric_median, krum, multi_krum, bulyan,
centered_clip, mda, dnc, signguard. Pre-aggregators (composable in front of any aggregator): nnm,
bucketing, clip, arc. Each module's docstring cites its paper, states the rule and its tolerance
condition. ``f`` is the number of Byzantine nodes tolerated; a condition that fails for the round's
N raises ConfigError showing N and f.

Shared kernels: ``_gram`` (one centred, blocked Gram matrix for every distance-based rule) and
``_sortnet`` (blocked sorting networks for the coordinate-wise rules). Rows with a NaN / Inf value
(or norm above 1e18) are handled by every robust rule, up to f of them.
"""

from __future__ import annotations

# Importing the rule modules registers them.
from trustworthy_dl.aggregation import (  # noqa: F401
    bucketing,
    bulyan,
    centered_clip,
    clipping,
    dnc,
    geometric_median,
    krum,
    mda,
    mean,
    median,
    nnm,
    signguard,
    trimmed_mean,
)
from trustworthy_dl.aggregation._rows import Rows
from trustworthy_dl.aggregation.base import AGGREGATORS, PRE_AGGREGATORS, AggResult
from trustworthy_dl.aggregation.pipeline import (
    Aggregator,
    aggregator_params,
    build_aggregator,
    get_aggregator,
)

__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATORS",
    "AggResult",
    "Aggregator",
    "Rows",
    "aggregator_params",
    "build_aggregator",
    "get_aggregator",
    "list_aggregators",
    "list_pre_aggregators",
]


def list_aggregators() -> list[str]:
    """Registered aggregator names."""
    return AGGREGATORS.names()


def list_pre_aggregators() -> list[str]:
    """Registered pre-aggregator names."""
    return PRE_AGGREGATORS.names()
