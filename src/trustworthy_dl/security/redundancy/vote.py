"""Majority vote over the r copies of one file's gradient (DETOX, ByzShield).

Copies are grouped by agreement (bitwise equality, or a relative L2 distance within
``tolerance``); the largest group wins if it is a strict majority of the copies voting. With no
strict majority (possible only when copies are missing, e.g. a holder is quarantined) the file
has no winner and is left out of the round's aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Vote", "agree", "majority_vote"]


def agree(a: Tensor, b: Tensor, *, mode: Literal["exact", "tolerance"], tolerance: float = 0.0) -> bool:
    """Whether two copies agree."""
    if mode == "exact":
        return bool(torch.equal(a, b))
    scale = max(float(a.norm()), float(b.norm()), 1e-12)
    return float((a - b).norm()) <= tolerance * scale


@dataclass
class Vote:
    """``winner``: the index of a copy holding the winning value (None: no strict majority);
    ``agree_C``: which copies hold that value (the largest group when there is no winner)."""

    winner: int | None
    agree_C: Tensor


def majority_vote(
    copies_CD: Tensor, *, mode: Literal["exact", "tolerance"] = "exact", tolerance: float = 0.0
) -> Vote:
    """The majority of the copies (rows of ``copies_CD``)."""
    c = copies_CD.shape[0]
    if c == 0:
        return Vote(None, torch.zeros(0, dtype=torch.bool))
    groups: list[list[int]] = []
    for i in range(c):
        for g in groups:
            if agree(copies_CD[i], copies_CD[g[0]], mode=mode, tolerance=tolerance):
                g.append(i)
                break
        else:
            groups.append([i])
    best = max(groups, key=len)
    mask = torch.zeros(c, dtype=torch.bool)
    mask[best] = True
    return Vote(best[0] if 2 * len(best) > c else None, mask)
