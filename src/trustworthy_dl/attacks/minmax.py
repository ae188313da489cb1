"""Min-max and min-sum (AGR-agnostic) attacks.

V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
Defenses for Federated Learning", NDSS 2021. With ``mu`` the honest mean and ``p`` a perturbation
direction, every Byzantine node sends ``m = mu + gamma * p`` with the largest ``gamma >= 0`` such
that ``m`` is no further from the honest updates ``g_i`` than they are from each other:

    min-max:  max_i ||m - g_i||^2        <=  max_{i,j} ||g_i - g_j||^2
    min-sum:  sum_i ||m - g_i||^2        <=  max_j sum_i ||g_j - g_i||^2

``direction`` (the paper's ``dev_type``): ``unit_vec`` ``p = -mu / ||mu||``, ``sign``
``p = -sign(mu)``, ``std`` ``p = -sigma`` (coordinate-wise population std).

Both constraints are quadratic in gamma and hold at gamma = 0, so the paper's bisection on gamma
is solved here in closed form: min-max ``gamma = min_i`` of the positive root of
``||d_i + gamma p||^2 = T`` (``d_i = mu - g_i``); min-sum ``gamma = sqrt((T - S0) / (H ||p||^2))``
(``S0 = sum_i ||d_i||^2``; the cross term vanishes because ``sum_i d_i = 0``). The paper's code caps
gamma by its initial value (10); this does not.

Legend: H honest rows, B Byzantine rows, D flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import UpdateAttack, check_choice, honest_mean_std, repeat_rows
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import UPDATE_ATTACKS

__all__ = ["MinMax", "MinSum", "perturbation"]

_DIRECTIONS = ("unit_vec", "sign", "std")


def perturbation(honest_HD: Tensor, direction: str) -> tuple[Tensor, Tensor]:
    """``(mu_D, p_D)``: honest mean and the perturbation direction ``p`` (float32 or float64)."""
    mu_D, sigma_D = honest_mean_std(honest_HD)
    if direction == "unit_vec":
        norm = torch.linalg.vector_norm(mu_D)
        p_D = -mu_D / norm if norm > 0 else torch.zeros_like(mu_D)
    elif direction == "sign":
        p_D = -torch.sign(mu_D)
    elif direction == "std":
        p_D = -sigma_D
    else:
        raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}; got {direction!r}")
    return mu_D, p_D


def _pairwise_sq(x_HD: Tensor) -> Tensor:
    """(H, H) squared Euclidean distances, computed without the Gram-matrix shortcut (exact)."""
    return torch.cdist(x_HD, x_HD, compute_mode="donot_use_mm_for_euclid_dist").square()


def min_max_gamma(honest_HD: Tensor, mu_D: Tensor, p_D: Tensor) -> float:
    """Largest ``gamma >= 0`` with ``max_i ||mu + gamma p - g_i||^2 <= max_{i,j} ||g_i - g_j||^2``."""
    x = honest_HD.to(mu_D.dtype)
    a = float(p_D.square().sum())
    if a == 0.0:
        return 0.0
    bound = _pairwise_sq(x).max()
    d_HD = mu_D - x
    b_H = d_HD @ p_D
    c_H = d_HD.square().sum(1) - bound  # <= 0: the mean is inside the honest cloud
    disc_H = (b_H.square() - a * c_H).clamp_min(0.0)
    roots_H = (-b_H + disc_H.sqrt()) / a
    return max(float(roots_H.min()), 0.0)


def min_sum_gamma(honest_HD: Tensor, mu_D: Tensor, p_D: Tensor) -> float:
    """Largest ``gamma >= 0`` with ``sum_i ||mu + gamma p - g_i||^2 <= max_j sum_i ||g_j - g_i||^2``."""
    x = honest_HD.to(mu_D.dtype)
    a = float(p_D.square().sum())
    if a == 0.0:
        return 0.0
    bound = float(_pairwise_sq(x).sum(1).max())
    s0 = float((mu_D - x).square().sum())
    return max(bound - s0, 0.0) ** 0.5 / (x.shape[0] * a) ** 0.5


@dataclass
class _AgrAgnostic(UpdateAttack):
    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    direction: Literal["unit_vec", "sign", "std"] = "unit_vec"

    def __post_init__(self) -> None:
        self.direction = check_choice("direction", self.direction, _DIRECTIONS)  # type: ignore[assignment]

    def gamma(self, honest_HD: Tensor, mu_D: Tensor, p_D: Tensor) -> float:
        raise NotImplementedError

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        mu_D, p_D = perturbation(honest_HD, self.direction)
        gamma = self.gamma(honest_HD, mu_D, p_D)
        return repeat_rows(mu_D + gamma * p_D, num_byzantine, honest_HD)


@UPDATE_ATTACKS.register("min_max")
@dataclass
class MinMax(_AgrAgnostic):
    """``mu + gamma p`` no further from any honest update than the two furthest honest ones are apart."""

    def gamma(self, honest_HD: Tensor, mu_D: Tensor, p_D: Tensor) -> float:
        return min_max_gamma(honest_HD, mu_D, p_D)


@UPDATE_ATTACKS.register("min_sum")
@dataclass
class MinSum(_AgrAgnostic):
    """``mu + gamma p`` whose summed squared distance to the honest updates is within the honest max."""

    def gamma(self, honest_HD: Tensor, mu_D: Tensor, p_D: Tensor) -> float:
        return min_sum_gamma(honest_HD, mu_D, p_D)
