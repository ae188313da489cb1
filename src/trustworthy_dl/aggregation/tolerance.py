"""What f each rule tolerates for n rows, declared next to the registry instead of probed.

Every rule checks its own condition when called (``require``: "krum cannot tolerate f=4 with
n=9: needs 2f + 2 < n"). The engine, which must lower f when quarantines or a small stage group
leave few rows, asks :func:`max_f` instead of calling the rule with ever smaller f until one
succeeds. A test checks, for every registered rule and every (n, f) up to 24 rows, that a rule runs
exactly when f <= ``max_f(n)``.

Pre-aggregators are part of the chain: a pre-stage has its own condition on the rows it receives
and passes on a number of rows (bucketing: ceil(n / s)); the next stage's condition applies to
those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ANY_F", "max_f_of_rule", "rows_after"]

#: "no limit": a rule that tolerates any f (the mean does not claim robustness at all).
ANY_F = 1 << 30


def _half(n: int, _: Mapping[str, Any]) -> int:
    return (n - 1) // 2  # 2f < n


def _krum(n: int, _: Mapping[str, Any]) -> int:
    return (n - 3) // 2  # 2f + 2 < n


def _bulyan(n: int, _: Mapping[str, Any]) -> int:
    return (n - 3) // 4  # n >= 4f + 3


def _dnc(n: int, params: Mapping[str, Any]) -> int:
    c = float(params.get("c", 1.0))
    f = _half(n, params)
    while f >= 0 and math.floor(c * f) >= n:  # floor(c * f) < n
        f -= 1
    return f


def _any(n: int, _: Mapping[str, Any]) -> int:
    return ANY_F


_RULES: dict[str, Callable[[int, Mapping[str, Any]], int]] = {
    "mean": _any,
    "median": _half,
    "trimmed_mean": _half,
    "geometric_median": _half,
    "centered_clip": _half,
    "mda": _half,
    "signguard": _half,
    "dnc": _dnc,
    "krum": _krum,
    "multi_krum": _krum,
    "bulyan": _bulyan,
    # pre-aggregators
    "nnm": _half,
    "arc": _half,
    "clip": _any,
    "bucketing": _any,
}


def max_f_of_rule(name: str, n: int, params: Mapping[str, Any]) -> int:
    """The largest f rule ``name`` (canonical) tolerates on ``n`` rows (-1: none)."""
    if name not in _RULES:
        raise KeyError(f"no tolerance declared for rule {name!r}")
    return max(-1, _RULES[name](n, params))


def rows_after(name: str, n: int, params: Mapping[str, Any]) -> int:
    """How many rows a pre-aggregator passes on from ``n``."""
    if name == "bucketing":
        return -(-n // int(params.get("s", 2)))
    return n
