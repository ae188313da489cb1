"""Mean-shift ("shifted mean") attack.

W. Zhu, B. Z. H. Zhao, S. Luo, T. Liu, K. Deng, "MANDERA: Malicious Node Detection in Federated
Learning via Ranking", 2022 (arXiv:2110.11736), after Baruch et al. 2019. Every Byzantine node
sends the honest mean shifted by a fixed multiple of the honest std::

    byz = mu - shift * sigma        (coordinate-wise; sigma is the population std)

Unlike ALIE, ``shift`` is a fixed hyperparameter, not derived from N and f; a negative ``shift``
moves the other way.

Legend: H honest rows, B Byzantine rows, D flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import UpdateAttack, check_float, honest_mean_std, repeat_rows
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import UPDATE_ATTACKS

__all__ = ["MeanShift"]


@UPDATE_ATTACKS.register("mean_shift")
@dataclass
class MeanShift(UpdateAttack):
    """Byzantine rows = ``mu - shift * sigma`` of the honest updates."""

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    shift: float = 1.5

    def __post_init__(self) -> None:
        self.shift = check_float("shift", self.shift)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, sigma_D = honest_mean_std(honest_HD)
        return repeat_rows(mu_D - self.shift * sigma_D, num_byzantine, honest_HD)
