"""What every stage-1 detection method returns, their registry, and shared helpers.

A detection method is a function ``(x_Nd, *, reference_d=None, **params) -> MethodResult`` over
the round's updates restricted to a coordinate subset (``d`` of the ``D`` coordinates), pure but
for what the detector hands it: the rank test's ``history`` callback updates the detector's
per-node memory (:mod:`~trustworthy_dl.security.rank_history`). It sees only finite rows; the
detector flags non-finite rows itself.

Legend: N nodes, D flat parameters, d sampled coordinates (d <= D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustworthy_dl.registry import Registry

__all__ = [
    "DETECTION_METHODS",
    "MethodResult",
    "finite_rows",
    "json_list",
    "robust_z",
    "robust_z_array",
    "sample_coords",
]

# 1 / Phi^-1(3/4): scales the MAD into a standard-deviation estimate for Gaussian data.
MAD_SCALE = 1.4826


@dataclass(frozen=True)
class MethodResult:
    """One detection method's verdict on the finite rows it was given.

    Attributes:
        flags_N: bool, True for the nodes this method flags.
        scores_N: float, suspicion normalised so that the method's threshold is 1.0 (> 1 flags).
        info: small JSON-friendly diagnostics (cluster sizes, the split's separation, ...).
        per_node: per-node diagnostics (z values, rank features), left as tensors: turning them
            into JSON lists every round costs more than some methods themselves, so the
            detector does it only when asked (``Stage1Detector(diagnostics=True)``).
    """

    flags_N: Tensor
    scores_N: Tensor
    info: dict[str, Any] = field(default_factory=dict)
    per_node: dict[str, Tensor] = field(default_factory=dict)


DetectionMethod = Callable[..., MethodResult]
DETECTION_METHODS: Registry[DetectionMethod] = Registry("detection method")


def finite_rows(updates_ND: Tensor) -> Tensor:
    """Bool mask of rows whose entries are all finite, in one streaming reduction.

    A row sum is non-finite when any entry is NaN or +-inf; it can also overflow for a row of
    enormous finite values, which is flagged too (such a row is an attack in any case).
    """
    return torch.isfinite(updates_ND.sum(dim=1))


def sample_coords(dim: int, num_coords: int | None, generator: torch.Generator | None) -> Tensor | None:
    """Sorted indices of a random coordinate subset, or None to use all ``dim`` coordinates.

    Sampling is with replacement when ``dim`` is much larger than ``num_coords`` (a randperm of
    10^7 entries costs more than the detection itself; duplicates are rare and harmless), and
    without replacement otherwise. Sorted indices keep the gather cache-friendly.
    """
    if num_coords is None or num_coords >= dim:
        return None
    if num_coords < 1:
        raise ValueError(f"num_coords must be >= 1, got {num_coords}")
    if dim <= 4 * num_coords:
        idx = torch.randperm(dim, generator=generator)[:num_coords]
    else:
        idx = torch.randint(dim, (num_coords,), generator=generator)
    return idx.sort().values


def robust_z(
    values_N: Tensor, *, floor: float, side: str = "both", population_N: Tensor | None = None
) -> Tensor:
    """Robust z-scores ``(v - median) / max(1.4826 * MAD, floor)`` across nodes.

    Args:
        values_N: one statistic per node (float).
        floor: smallest scale allowed; without it a round where honest nodes agree closely
            turns tiny honest differences into huge z values.
        side: "high" keeps only large values suspicious, "low" only small ones, "both" either.
        population_N: bool mask of the nodes the median and MAD are taken over (default: all);
            every node is scored against them. Repeated values are counted once.
    """
    if values_N.device.type == "cpu" and values_N.dtype == torch.float64:
        pop_np = None if population_N is None else population_N.cpu().numpy()
        return torch.from_numpy(robust_z_array(values_N.numpy(), floor=floor, side=side, population_N=pop_np))
    _check_side(side)
    pop = values_N if population_N is None else values_N[population_N]
    return _sided_torch(_robust_z_torch(values_N, pop, floor), side)


def robust_z_array(
    values_N: np.ndarray, *, floor: float, side: str = "both", population_N: np.ndarray | None = None
) -> np.ndarray:
    """:func:`robust_z` of float64 numpy arrays: in numpy for a finite population, bit for bit the
    torch formula (a round takes a dozen of them on a few dozen values, where each numpy op costs
    ~1 us and each torch op ~5 us); with torch's semantics for a non-finite one."""
    _check_side(side)
    pop = values_N if population_N is None else values_N[population_N]
    if not (pop.size and np.isfinite(pop).all()):
        return _sided_torch(
            _robust_z_torch(torch.from_numpy(values_N), torch.from_numpy(pop), floor), side
        ).numpy()
    # torch.median is the lower middle value (not the mean of the two), so is this
    u = np.unique(pop)  # sorted, each value once
    med = u[(u.size - 1) // 2]
    dev = np.sort(np.abs(u - med))
    scale = max(MAD_SCALE * dev[(dev.size - 1) // 2], floor)
    with np.errstate(divide="ignore", invalid="ignore"):  # floor 0 and no spread: inf / nan, as torch
        z = (values_N - med) / scale
    if side == "high":
        return np.maximum(z, 0.0)
    if side == "low":
        return np.maximum(-z, 0.0)
    return np.abs(z)


def _check_side(side: str) -> None:
    if side not in ("high", "low", "both"):
        raise ValueError(f"side must be 'high', 'low' or 'both', got {side!r}")


def _robust_z_torch(values_N: Tensor, pop: Tensor, floor: float) -> Tensor:
    # Identical values (colluding identical rows) count once: a block of copies would
    # otherwise collapse the MAD and make every honest node look extreme.
    pop = torch.unique(pop)
    med = pop.median()
    scale = torch.clamp(MAD_SCALE * (pop - med).abs().median(), min=floor)
    return (values_N - med) / scale


def _sided_torch(z: Tensor, side: str) -> Tensor:
    if side == "high":
        return z.clamp(min=0)
    if side == "low":
        return (-z).clamp(min=0)
    return z.abs()


def json_list(values: Tensor, ndigits: int = 4) -> list[float | None]:
    """A tensor as a list of rounded floats for logs; non-finite values become None (valid JSON)."""
    return [round(v, ndigits) if v == v and abs(v) != float("inf") else None for v in values.tolist()]
