"""Inner-product manipulation (IPM) and its optimal-scale variant.

C. Xie, O. Koyejo, I. Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
Manipulation", UAI 2020. Every Byzantine node sends ``-epsilon * mean(honest)``: with a small
epsilon the aggregate keeps a small norm but its inner product with the true gradient turns
negative; a large epsilon flips a plain mean outright.

Optimal IPM searches ``epsilon`` against the aggregator in use (see ``search.py``).

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
from trustworthy_dl.attacks.search import ScaleSearch

__all__ = ["Ipm", "OptimalIpm"]


@UPDATE_ATTACKS.register("ipm")
@dataclass
class Ipm(UpdateAttack):
    """Byzantine rows = ``-epsilon * mean(honest)``."""

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        self.epsilon = check_float("epsilon", self.epsilon, low=0.0, low_open=True)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, _ = honest_mean_std(honest_HD)
        return repeat_rows(-self.epsilon * mu_D, num_byzantine, honest_HD)


@UPDATE_ATTACKS.register("optimal_ipm")
@dataclass
class OptimalIpm(UpdateAttack, ScaleSearch):
    """IPM with ``epsilon > 0`` chosen each round to push ``context.aggregator``'s output furthest from ``mu``.

    The search starts at ``init_epsilon``, so the result moves the aggregate at least as far as
    plain IPM with that epsilon.
    """

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    init_epsilon: float = 0.1

    def __post_init__(self) -> None:
        self.init_epsilon = check_float("init_epsilon", self.init_epsilon, low=0.0, low_open=True)
        self._check_search()

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, _ = honest_mean_std(honest_HD)
        eps = self._search(
            "optimal_ipm", honest_HD, num_byzantine, context, lambda s: -s * mu_D, self.init_epsilon
        )
        return repeat_rows(-eps * mu_D, num_byzantine, honest_HD)
