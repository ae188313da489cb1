"""Robust aggregation: pure functions over an (N, D) stack, registered by name."""

from trustworthy_dl.aggregation.base import AGGREGATORS, PRE_AGGREGATORS, AggResult

__all__ = ["AGGREGATORS", "PRE_AGGREGATORS", "AggResult"]
