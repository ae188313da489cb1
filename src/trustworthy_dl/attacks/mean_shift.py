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

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import UpdateAttack, check_choice, check_float, honest_mean_std, repeat_rows
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import UPDATE_ATTACKS

__all__ = ["MeanShift"]


@UPDATE_ATTACKS.register("mean_shift")
@dataclass
class MeanShift(UpdateAttack):
    """Byzantine rows = ``mu - shift * sigma`` of the honest updates.

    ``shift`` is fixed (default 1.5), or ``None``: computed from (n, f) each round as ALIE and
    MANDERA do, with ``s = floor(n / 2 + 1) - f`` and ``z_formula``:

    * ``alie`` (Baruch et al. 2019): ``z = Phi^-1((n - s) / n)``;
    * ``mandera`` (Zhu et al. 2022): ``z = Phi^-1((n - f - s) / (n - f))``.
    """

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    shift: float | None = 1.5
    z_formula: str = "alie"

    def __post_init__(self) -> None:
        if self.shift is not None:
            self.shift = check_float("shift", self.shift)
        self.z_formula = check_choice("z_formula", self.z_formula, ("alie", "mandera"))

    def shift_for(self, num_nodes: int, num_byzantine: int) -> float:
        """The shift used with n nodes of which f Byzantine (the fixed one, or z(n, f))."""
        if self.shift is not None:
            return self.shift
        n, f = num_nodes, num_byzantine
        s = math.floor(n / 2 + 1) - f
        p = (n - s) / n if self.z_formula == "alie" else (n - f - s) / (n - f)
        if not 0.0 < p < 1.0:
            raise ValueError(
                f"mean_shift's z is undefined for n={n}, f={f} ({self.z_formula}: p={p}); give shift"
            )
        return NormalDist().inv_cdf(p)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, sigma_D = honest_mean_std(honest_HD)
        n = (
            context.num_nodes
            if context is not None and context.num_nodes
            else honest_HD.shape[0] + num_byzantine
        )
        shift = self.shift_for(n, num_byzantine)
        return repeat_rows(mu_D - shift * sigma_D, num_byzantine, honest_HD)
