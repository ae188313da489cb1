"""Simple update attacks: gaussian, zero-gradient, zero-sum, sign-flip, scaling, non-finite, mimic.

Legend: H honest rows the attack sees, B Byzantine rows it returns, D flat parameters.

References:
    Gaussian, zero-gradient and sign-flipping attacks as benchmarked in W. Zhu et al.,
    "MANDERA: Malicious Node Detection in Federated Learning via Ranking", 2022 (arXiv:2110.11736);
    Sign flipping: also L. Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods for
    Distributed Learning from Heterogeneous Datasets", AAAI 2019.
    Scaling ("boosting"): Bhagoji et al., "Analyzing Federated Learning through an Adversarial
    Lens", ICML 2019.
    Non-finite values: what an overflowing or buggy worker sends (NaN / Inf); no paper, a
    robustness case every aggregator must survive.
    Mimic: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import (
    UpdateAttack,
    check_choice,
    check_float,
    check_int,
    repeat_rows,
    require_generator,
    rowwise,
)
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import UPDATE_ATTACKS

__all__ = ["Gaussian", "Mimic", "NonFinite", "Scaling", "SignFlip", "ZeroGradient", "ZeroSum"]


@UPDATE_ATTACKS.register("gaussian")
@dataclass
class Gaussian(UpdateAttack):
    """Each Byzantine row is i.i.d. noise ``N(mean, std^2)`` per coordinate.

    ``center: zero`` (default): the honest update is ignored. ``center: honest_mean``: MANDERA's
    Gaussian attack, each Byzantine node sends the honest mean plus its own independent
    ``mean + std * N(0, 1)`` draw (an omniscient attack: it needs the honest rows; MANDERA uses
    ``std: 30``).
    """

    mean: float = 0.0
    std: float = 200.0
    center: str = "zero"

    def __post_init__(self) -> None:
        self.mean = check_float("mean", self.mean)
        self.std = check_float("std", self.std, low=0.0)
        self.center = check_choice("center", self.center, ("zero", "honest_mean"))

    @property  # type: ignore[override]
    def knowledge(self) -> Literal["own", "omniscient"]:  # type: ignore[override]
        return "omniscient" if self.center == "honest_mean" else "own"

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        g = require_generator("gaussian", generator)
        if self.center == "honest_mean":  # one independent draw per Byzantine node around the honest mean
            mu_D = honest_HD.float().mean(0)
            noise = torch.randn((num_byzantine, mu_D.numel()), generator=g, device=honest_HD.device)
            return (mu_D + noise * self.std + self.mean).to(honest_HD.dtype)
        shape = rowwise(honest_HD, num_byzantine).shape
        noise = torch.randn(shape, generator=g, device=honest_HD.device, dtype=torch.float32)
        return (noise * self.std + self.mean).to(honest_HD.dtype)


@UPDATE_ATTACKS.register("zero_gradient", "zero")
@dataclass
class ZeroGradient(UpdateAttack):
    """Byzantine rows are all zeros: the node pretends it learnt nothing (slows training)."""

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        return torch.zeros_like(rowwise(honest_HD, num_byzantine))


@UPDATE_ATTACKS.register("constant")
@dataclass
class Constant(UpdateAttack):
    """Byzantine rows are the constant vector ``value`` in every coordinate (DETOX / ByzShield's
    "constant attack"; the Byzantine copies of a file agree, so they win its vote when they hold
    a majority)."""

    value: float = -100.0

    def __post_init__(self) -> None:
        self.value = check_float("value", self.value)
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        return torch.full_like(rowwise(honest_HD, num_byzantine), self.value)


@UPDATE_ATTACKS.register("zero_sum")
@dataclass
class ZeroSum(UpdateAttack):
    """Byzantine rows = ``-sum(honest) / B`` (omniscient): the sum, and so a plain mean, of all N
    rows is exactly zero, so an undefended run stops learning. The stronger reading of a "zero
    gradient" attack; ``zero_gradient`` is the node that merely sends zeros."""

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        total_D = honest_HD.float().sum(0)
        return repeat_rows((-total_D / num_byzantine).to(honest_HD.dtype), num_byzantine, honest_HD)


@UPDATE_ATTACKS.register("sign_flip")
@dataclass
class SignFlip(UpdateAttack):
    """Byzantine row = ``-scale * own honest update``."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        self.scale = check_float("scale", self.scale, low=0.0, low_open=True)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        return rowwise(honest_HD, num_byzantine) * (-self.scale)


@UPDATE_ATTACKS.register("scaling", "boosting")
@dataclass
class Scaling(UpdateAttack):
    """Byzantine row = ``scale * own honest update`` (boosting: dominate a plain mean)."""

    scale: float = 10.0

    def __post_init__(self) -> None:
        self.scale = check_float("scale", self.scale)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        return rowwise(honest_HD, num_byzantine) * self.scale


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@UPDATE_ATTACKS.register("non_finite")
@dataclass
class NonFinite(UpdateAttack):
    """Own honest update with coordinates set to NaN / +Inf / -Inf.

    ``fraction=1`` poisons every coordinate; below 1 each coordinate is poisoned independently
    with probability ``fraction`` (drawn from the generator; at least one coordinate is poisoned).
    """

    value: Literal["nan", "inf", "-inf"] = "nan"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        self.value = check_choice("value", self.value, tuple(_NON_FINITE))  # type: ignore[assignment]
        self.fraction = check_float("fraction", self.fraction, low=0.0, high=1.0, low_open=True)

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        own_BD = rowwise(honest_HD, num_byzantine)
        if not own_BD.dtype.is_floating_point:
            raise ValueError(f"non_finite needs floating-point updates, got {own_BD.dtype}")
        out = own_BD.clone()
        fill = _NON_FINITE[self.value]
        if self.fraction >= 1.0:
            return out.fill_(fill)
        g = require_generator("non_finite", generator)
        mask = torch.rand(out.shape, generator=g, device=out.device) < self.fraction
        mask[:, 0] |= ~mask.any(1)  # never a silent no-op
        return out.masked_fill_(mask, fill)


@UPDATE_ATTACKS.register("mimic")
@dataclass
class Mimic(UpdateAttack):
    """Every Byzantine row copies one honest node's update, over-weighting it (hurts on non-IID data).

    ``target`` indexes the honest rows the attack sees (0: the honest node with the lowest id), or
    ``"auto"``: Karimireddy et al.'s choice, the honest node furthest along the top principal
    direction of the honest updates, ``argmax_i |z^T (x_i - mu)|`` (z by power iteration on the
    honest rows, each round).
    """

    knowledge: ClassVar[Literal["own", "omniscient"]] = "omniscient"
    target: int | str = 0

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            self.target = check_choice("target", self.target, ("auto",))
        else:
            self.target = check_int("target", self.target, low=0)

    @staticmethod
    def auto_target(honest_HD: Tensor, iters: int = 30) -> int:
        """The honest row furthest from the mean along the top principal direction."""
        x = honest_HD.double()
        c = x - x.mean(0)
        z = c.abs().sum(0)  # a deterministic start with a component along the top direction
        for _ in range(iters):
            z = c.t() @ (c @ z)
            norm = torch.linalg.vector_norm(z)
            if float(norm) == 0.0:
                return 0
            z = z / norm
        return int((c @ z).abs().argmax())

    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        target = self.auto_target(honest_HD) if self.target == "auto" else int(self.target)
        if target >= honest_HD.shape[0]:
            raise ValueError(f"mimic target={target} but only {honest_HD.shape[0]} honest rows")
        return repeat_rows(honest_HD[target], num_byzantine, honest_HD)
