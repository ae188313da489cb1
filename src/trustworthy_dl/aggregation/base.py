"""What every aggregator returns, and the registries they live in.

Legend: N nodes, D flat parameters. ``updates_ND`` is the round's stack of node updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from trustworthy_dl.registry import Registry

__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "AggResult"]


@dataclass(frozen=True)
class AggResult:
    """The aggregate and how each node contributed to it.

    Attributes:
        value_D: the aggregated update.
        weights_N: each node's weight in the aggregate (sums to 1 for averaging rules).
        selected_N: bool mask of the nodes the rule kept (Krum's choice, trimmed mean's survivors...).
        info: small diagnostics (iterations, scores) as plain floats / lists.
    """

    value_D: Tensor
    weights_N: Tensor
    selected_N: Tensor
    info: dict[str, Any] = field(default_factory=dict)


AGGREGATORS: Registry[Callable[..., Any]] = Registry("aggregator")
PRE_AGGREGATORS: Registry[Callable[..., Any]] = Registry("pre-aggregator")
