"""Byzantine pipeline stages: tampered activations, activation-gradients or parameters.

In pipeline model parallelism a node that holds a stage sits on the data path (threat model,
DESIGN.md): it can send the next stage wrong activations (``activation_tamper``), send the
previous stage wrong activation-gradients (``gradient_tamper``), or compute with parameters
other than the ones the coordinator gave it (``parameter_tamper``). Each is configured like every
other attack (``attack.name``, ids or count, ``start_round`` / ``end_round`` / ``every``) with

* ``mode``: ``noise`` (add Gaussian noise of ``strength`` x the tensor's RMS), ``scale``
  (multiply by ``strength``), ``sign_flip`` (multiply by ``-strength``), ``constant`` (every
  entry ``strength``), ``zero``; ``parameter_tamper`` also has ``skip`` (ignore every update from
  the attack's start: the node keeps training with stale parameters);
* ``strength``: as the mode says.

References: the pipeline threat model of the seed (trustworthy-dl README) and of SWARM/BTARD-style
systems (Gorbunov et al. 2022, "Secure Distributed Training at Scale", where a peer's outputs are
checked by re-computation).

Legend: B micro-batch, D_s the stage's flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import check_choice, check_float
from trustworthy_dl.attacks.registry import PIPELINE_ATTACKS

__all__ = ["ActivationTamper", "GradientTamper", "ParameterTamper", "StageAttack", "tamper_tensor"]

MODES = ("noise", "scale", "sign_flip", "constant", "zero")


def tamper_tensor(t: Tensor, mode: str, strength: float, generator: torch.Generator) -> Tensor:
    """A tampered copy of ``t`` (the input is never modified)."""
    if mode == "noise":
        rms = t.detach().float().pow(2).mean().sqrt().clamp_min(1e-12)
        noise = torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        return t + (strength * rms).to(t.dtype) * noise
    if mode == "scale":
        return t * strength
    if mode == "sign_flip":
        return t * -strength
    if mode == "constant":
        return torch.full_like(t, strength)
    if mode == "zero":
        return torch.zeros_like(t)
    raise ValueError(f"unknown tamper mode {mode!r}; valid: {', '.join(MODES)}")


@dataclass
class StageAttack:
    """What a Byzantine stage holder tampers with (``target``) and how."""

    target: ClassVar[Literal["activation", "gradient", "parameter"]]
    modes: ClassVar[tuple[str, ...]] = MODES
    mode: str = "noise"
    strength: float = 1.0

    def __post_init__(self) -> None:
        self.mode = check_choice("mode", self.mode, self.modes)
        self.strength = check_float("strength", self.strength)

    def apply(self, t: Tensor, generator: torch.Generator) -> Tensor:
        return tamper_tensor(t, self.mode, self.strength, generator)


@PIPELINE_ATTACKS.register("activation_tamper")
@dataclass
class ActivationTamper(StageAttack):
    """The stage's output activations (forward messages to the next stage) are tampered with."""

    target: ClassVar[Literal["activation", "gradient", "parameter"]] = "activation"


@PIPELINE_ATTACKS.register("gradient_tamper")
@dataclass
class GradientTamper(StageAttack):
    """The activation-gradients the stage sends upstream (backward messages) are tampered with."""

    target: ClassVar[Literal["activation", "gradient", "parameter"]] = "gradient"


@PIPELINE_ATTACKS.register("parameter_tamper")
@dataclass
class ParameterTamper(StageAttack):
    """The stage computes with its own poisoned copy of its parameters (``skip``: stale ones)."""

    target: ClassVar[Literal["activation", "gradient", "parameter"]] = "parameter"
    modes: ClassVar[tuple[str, ...]] = (*MODES, "skip")
    mode: str = "noise"
    strength: float = 1.0
