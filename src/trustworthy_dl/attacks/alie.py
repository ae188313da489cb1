"""A Little Is Enough (ALIE) and its optimal-scale variant.

G. Baruch, M. Baruch, Y. Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
Learning", NeurIPS 2019. Every Byzantine node sends ``mu - z * sigma`` (coordinate-wise mean and
std of the honest updates): close enough to the honest cloud that median / trimmed-mean / Krum keep
it, yet consistently biased. The paper's largest undetected ``z`` for N nodes and f Byzantine::

    s = floor(N / 2 + 1) - f         # honest nodes the attacker needs "on its side"
    z = Phi^{-1}((N - s) / N)        # Phi: standard normal CDF

Optimal ALIE instead searches ``z`` against the aggregator in use (see ``search.py``).

Legend: N nodes, H honest rows, B Byzantine rows, D flat parameters. ``sigma`` is the population
std (``correction=0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import UpdateAttack, check_float, honest_mean_std, repeat_rows
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import UPDATE_ATTACKS
from trustworthy_dl.attacks.search import ScaleSearch

__all__ = ["Alie", "OptimalAlie", "alie_z"]


def alie_z(num_nodes: int, num_byzantine: int) -> float:
    """Baruch et al.'s ``z_max = Phi^{-1}((N - s) / N)`` with ``s = floor(N/2 + 1) - f``."""
    n, f = num_nodes, num_byzantine
    if n < 1 or not 0 <= f < n:
        raise ValueError(f"ALIE needs 0 <= f < N; got N={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE's z is undefined for N={n}, f={f} (s = floor(N/2+1) - f = {s}, (N-s)/N = {p}); pass z"
        )
    return NormalDist().inv_cdf(p)


def _num_nodes(honest_HD: Tensor, num_byzantine: int, context: AttackContext | None) -> int:
    if context is not None and context.num_nodes is not None:
        return context.num_nodes
    return honest_HD.shape[0] + num_byzantine


@UPDATE_ATTACKS.register("alie")
@dataclass
class Alie(UpdateAttack):
    """Byzantine rows = ``mu - z * sigma`` of the honest updates; ``z=None``: the paper's z_max(N, f)."""

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            self.z = check_float("z", self.z)

    def z_for(self, honest_HD: Tensor, num_byzantine: int, context: AttackContext | None) -> float:
        """The z used this round: the given one, or z_max(N, f)."""
        if self.z is not None:
            return self.z
        return alie_z(_num_nodes(honest_HD, num_byzantine, context), num_byzantine)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, sigma_D = honest_mean_std(honest_HD)
        z = self.z_for(honest_HD, num_byzantine, context)
        return repeat_rows(mu_D - z * sigma_D, num_byzantine, honest_HD)


@UPDATE_ATTACKS.register("optimal_alie")
@dataclass
class OptimalAlie(UpdateAttack, ScaleSearch):
    """ALIE with ``z > 0`` chosen each round to push ``context.aggregator``'s output furthest from ``mu``.

    The search starts at ``init_z`` (None: the paper's z_max, or 1 if that is not positive), so the
    result moves the aggregate at least as far as plain ALIE with that z.
    """

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    init_z: float | None = None

    def __post_init__(self) -> None:
        if self.init_z is not None:
            self.init_z = check_float("init_z", self.init_z, low=0.0, low_open=True)
        self._check_search()

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, sigma_D = honest_mean_std(honest_HD)
        init = self.init_z
        if init is None:
            z0 = Alie().z_for(honest_HD, num_byzantine, context)
            init = z0 if z0 > 0 else 1.0
        z = self._search(
            "optimal_alie", honest_HD, num_byzantine, context, lambda s: mu_D - s * sigma_D, init
        )
        return repeat_rows(mu_D - z * sigma_D, num_byzantine, honest_HD)
