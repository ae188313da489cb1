"""Sparsification of a node's update: top-k or random-k, with optional error feedback.

Order with DP: noise first, then sparsify. The sparsified update is then a function of the noisy
update only (post-processing), so the accountant's epsilon holds unchanged, and the error-feedback
memory (what was dropped, carried to the next round) is noisy too. The other order would choose the
kept coordinates from the clean gradient (the support itself leaks) and noise on every coordinate
would undo the sparsity.

* ``topk``: keep the k = ceil(ratio * D) coordinates of largest magnitude.
* ``randk``: keep k coordinates drawn from the node's replayable generator; without error
  feedback the kept values are scaled by D / k (an unbiased estimate, Stich et al. 2018), with
  error feedback they are not (the memory carries the rest).
* error feedback (Seide et al. 2014; Karimireddy et al. 2019): ``v = u + e``; send ``s = sparse(v)``;
  keep ``e = v - s`` on the node. The memory is node state: checkpointed and restored on resume.

Bytes: a sparse update is k values and k int32 indices (8k bytes in float32) against 4D dense;
``bytes_per_update`` reports the encoded size. The simulated and gloo exchanges still move dense
rows (zeros included), so this is the size a sparse encoding would send, computed, not measured.

Legend: D flat parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["Sparsifier"]


class Sparsifier:
    """Sparsifies update rows in place, holding each node's error-feedback memory."""

    def __init__(self, kind: str, ratio: float, *, error_feedback: bool) -> None:
        if kind not in ("topk", "randk"):
            raise ValueError(f"sparsify kind must be topk or randk, got {kind!r}")
        if not 0 < ratio <= 1:
            raise ValueError(f"sparsify ratio must be in (0, 1], got {ratio}")
        self.kind, self.ratio, self.error_feedback = kind, float(ratio), bool(error_feedback)
        self.memory: dict[int, Tensor] = {}

    def k(self, d: int) -> int:
        return max(1, math.ceil(self.ratio * d))

    def bytes_per_update(self, d: int, element_size: int = 4) -> int:
        """Encoded size of one sparse update: k values and k int32 indices."""
        return self.k(d) * (element_size + 4)

    def apply_(self, node: int, row_D: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sparsify ``row_D`` in place (adding and then updating ``node``'s memory); returns it."""
        d = row_D.numel()
        k = self.k(d)
        if self.error_feedback:
            mem = self.memory.get(node)
            if mem is not None:
                row_D.add_(mem)
        if self.kind == "topk":
            idx = torch.topk(row_D.abs(), k, sorted=False).indices
        else:
            if generator is None:
                raise ValueError("randk needs the node's generator")
            idx = torch.randperm(d, generator=generator, device=row_D.device)[:k]
        kept = row_D[idx].clone()
        if self.error_feedback:
            kept_mask = torch.zeros(d, dtype=torch.bool, device=row_D.device)
            kept_mask[idx] = True
            self.memory[node] = row_D.masked_fill(kept_mask, 0.0)  # what was dropped
        elif self.kind == "randk":
            kept.mul_(d / k)
        row_D.zero_()
        row_D[idx] = kept
        return row_D

    def state_dict(self) -> dict[str, Any]:
        return {str(n): m.detach().cpu().clone() for n, m in self.memory.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.memory = {int(n): m.to(device) for n, m in state.items()}
