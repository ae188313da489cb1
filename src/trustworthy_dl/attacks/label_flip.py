"""Label-flipping data attack.

B. Biggio, B. Nelson, P. Laskov, "Poisoning Attacks against Support Vector Machines", ICML 2012;
in federated learning: V. Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
Systems", ESORICS 2020. A Byzantine node trains honestly on its batch with the labels changed:

* ``mode: fixed`` (default): ``y -> num_classes - 1 - y``, or, if ``mapping`` is given, only the
  listed labels change (``{7: 1}``: sevens become ones; others stay).
* ``mode: random``: each label becomes a uniformly drawn *different* class.

``fraction`` of the batch's samples (drawn from the generator) are flipped; the inputs are
unchanged. For text batches ``y`` holds next-token ids and ``num_classes`` is the vocabulary size;
the flip applies to every target token of a chosen sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import DataAttack, check_choice, check_float, check_int
from trustworthy_dl.attacks.registry import DATA_ATTACKS

__all__ = ["LabelFlip", "choose_samples"]


def choose_samples(batch: int, fraction: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Bool mask over the batch with ``round(fraction * batch)`` (>= 1 if fraction > 0) samples set."""
    if fraction >= 1.0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    k = min(batch, max(1, round(fraction * batch))) if batch else 0
    mask = torch.zeros(batch, dtype=torch.bool, device=device)
    mask[torch.randperm(batch, generator=generator, device=device)[:k]] = True
    return mask


@DATA_ATTACKS.register("label_flip")
@dataclass
class LabelFlip(DataAttack):
    """Flip labels of a Byzantine node's batch (fixed map or random); inputs unchanged."""

    mode: Literal["fixed", "random"] = "fixed"
    mapping: dict[int, int] | None = None
    fraction: float = 1.0

    def __post_init__(self) -> None:
        self.mode = check_choice("mode", self.mode, ("fixed", "random"))  # type: ignore[assignment]
        self.fraction = check_float("fraction", self.fraction, low=0.0, high=1.0, low_open=True)
        if self.mapping is not None:
            if self.mode != "fixed":
                raise ValueError("mapping is only used with mode: fixed")
            if not isinstance(self.mapping, dict) or not self.mapping:
                raise ValueError(f"mapping must be a non-empty {{label: label}} dict, got {self.mapping!r}")
            self.mapping = {
                _label("mapping key", k): _label("mapping value", v) for k, v in self.mapping.items()
            }

    def flip(self, y: Tensor, *, generator: torch.Generator, num_classes: int) -> Tensor:
        """Every label of ``y`` flipped (no sample selection)."""
        check_int("num_classes", num_classes, low=2)
        if self.mode == "random":
            # A uniform offset in [1, C-1] lands on a uniformly drawn class other than y.
            offset = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
            return (y + offset) % num_classes
        if self.mapping is None:
            return num_classes - 1 - y
        bad = [k for kv in self.mapping.items() for k in kv if k >= num_classes]
        if bad:
            raise ValueError(f"label_flip mapping uses labels {bad} >= num_classes={num_classes}")
        out = y.clone()
        for src, dst in self.mapping.items():
            out[y == src] = dst
        return out

    def apply(
        self, x: Tensor, y: Tensor, *, generator: torch.Generator, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        mask = choose_samples(y.shape[0], self.fraction, generator, y.device)
        flipped = self.flip(y, generator=generator, num_classes=num_classes)
        m = mask.view(-1, *([1] * (y.dim() - 1)))
        return x, torch.where(m, flipped, y)


def _label(what: str, v: Any) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    return check_int(what, v, low=0)
