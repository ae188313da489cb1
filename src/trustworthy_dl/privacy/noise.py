"""The Gaussian noise a node adds to its update, from a generator the verifier can replay.

Each (run seed, node, round) has its own generator, so the noise is reproducible: the simulated
backend and ``torchrun`` draw the same values, a resumed run draws what the uninterrupted one
drew, and stage-2 verification (which re-computes a node's update and compares) replays the node's
noise instead of giving up on noisy nodes. The cost, stated in the README's threat model: whoever
knows the run seed (the trusted coordinator, and in this release any participant, since the seed
is in the shared config) can subtract the noise, so the DP guarantee protects a node's data from
eavesdroppers on its link and from everyone who sees the model or the aggregate, not from the
coordinator. A deployment would give each node a secret seed shared only with its verifier.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustworthy_dl.attacks.attacker import derive_seed

__all__ = ["add_noise_", "node_generator"]


def node_generator(seed: int, node: int, round: int, purpose: str, device: torch.device) -> torch.Generator:
    """The generator of ``node`` in ``round`` for ``purpose`` ("noise", "randk")."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "privacy", purpose, round, node))


def add_noise_(row_D: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """``row_D += N(0, std^2 I)`` drawn from ``generator``; returns ``row_D``."""
    if std > 0:
        noise = torch.randn(row_D.shape, generator=generator, dtype=row_D.dtype, device=row_D.device)
        row_D.add_(noise, alpha=std)
    return row_D
