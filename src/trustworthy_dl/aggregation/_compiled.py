"""The sorting-network statistics through ``torch.compile`` (opt-in: ``TDL_COMPILE=1``).

The torch path of ``_sortnet`` issues one ``minimum`` / ``maximum`` op per comparator, each a pass
over a column block. Handed the whole pruned network as one function, Inductor fuses the
comparators and the final middle mean into loops over the columns (C++ with vector instructions
on CPU, Triton kernels on GPU), what the native kernel does by hand, with the same operations in
the same order, so the values are bitwise those of the torch path (tested,
NaN and infinities included). Measured on this 2-core CPU (``python benchmarks/compiled_kernels.py``,
through the aggregator): at N = 16 1.4-2x slower than the eager path and 4-6x slower than the native
kernel; at N = 64 (800-1,000 min / max ops in one graph) it is 1.5-6x slower than eager; the
first call compiles for 4-40 s (cached on disk by Inductor afterwards). So it is never the default
on CPU; it exists for GPUs (a Triton kernel instead of one launch per comparator), where it has
not been measured here (no GPU was lent), which is why it is opt-in there too.
``AggResult.info["kernel"]`` is "compiled" when it ran.

Legend: M rows, D columns.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["enabled", "middle_mean"]

# An op of a compiled plan: (torch.minimum or torch.maximum, input row, input row, output row).
Op = tuple[Callable[..., Tensor], int, int, int]


def enabled() -> bool:
    """``TDL_COMPILE=1`` asks for the compiled path (it then comes before the native kernel)."""
    return os.environ.get("TDL_COMPILE", "0") == "1"


def _network(ops: tuple[Op, ...], wire_row: tuple[int, ...], lo: int, hi: int) -> Callable[[Tensor], Tensor]:
    """The plan as one straight-line function of the (M, D) rows: the mean of the middle wires
    lo..hi. Generated from source per plan, so that every plan is its own code object: torch.compile
    keeps at most ``recompile_limit`` (8) graphs per code object, and one shared closure would stop
    compiling (``fullgraph``: an error) after eight plans."""
    m = len(wire_row)
    lines = [
        "def run(X):",
        "    X = torch.nan_to_num(X, nan=INF, posinf=INF, neginf=-INF)",  # as the torch path copies blocks in
        *(f"    r{i} = X[{i}]" for i in range(m)),
    ]
    for fn, a, b, out in ops:
        lines.append(f"    r{out} = torch.{'minimum' if fn is torch.minimum else 'maximum'}(r{a}, r{b})")
    mid = [f"r{wire_row[w]}" for w in range(lo, hi + 1)]
    acc = mid[0]
    for t in mid[1:]:
        acc = f"({acc} + {t})"
    lines.append(f"    return {acc} * {1.0 / len(mid)!r}" if len(mid) > 1 else f"    return {acc}.clone()")
    namespace: dict[str, object] = {"torch": torch, "INF": float("inf")}
    exec(compile("\n".join(lines), f"<tdl sorting network m={m} lo={lo} hi={hi}>", "exec"), namespace)
    return namespace["run"]  # type: ignore[return-value]


@functools.cache
def _compiled(
    ops: tuple[Op, ...], wire_row: tuple[int, ...], lo: int, hi: int, device: str
) -> Callable[[Tensor], Tensor]:
    del device  # part of the cache key: one compiled graph per device type
    return torch.compile(_network(ops, wire_row, lo, hi), dynamic=True, fullgraph=True)


_failed: set[tuple[object, ...]] = set()


def middle_mean(ops: tuple[Op, ...], wire_row: tuple[int, ...], lo: int, hi: int, X: Tensor) -> Tensor | None:
    """The compiled network's middle mean of ``X`` (M, D), or None when compiling it fails (then
    the caller's next path runs; each failing (plan, device) is warned about once)."""
    key = (ops, wire_row, lo, hi, X.device.type)
    if key in _failed:
        return None
    try:
        return _compiled(ops, wire_row, lo, hi, X.device.type)(X)
    except Exception as err:  # e.g. no working C++ toolchain for Inductor: the next path runs
        _failed.add(key)
        msg = f"trustworthy_dl: torch.compile of a sorting network failed ({err!r:.300}); using the next path"
        warnings.warn(msg, stacklevel=3)
        return None
    try:
        return _compiled(ops, wire_row, lo, hi, X.device.type)(X)
    except Exception as err:  # Inductor needs a working compiler toolchain; anything else: eager
        _failed.add(key)
        msg = f"trustworthy_dl: torch.compile of a sorting network failed ({err!r:.300}); using the next path"
        warnings.warn(msg, stacklevel=3)
        return None
