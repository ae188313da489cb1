"""The coordinator's optimizer: applies the aggregated update to the flat parameters."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trustworthy_dl.config import TrainingConfig

__all__ = ["CoordinatorOptimizer"]


class CoordinatorOptimizer:
    """SGD (with momentum) / Adam / AdamW over ``params_D``, with the configured learning-rate schedule.

    The aggregated update plays the role of the gradient; ``training.grad_clip`` bounds its norm.
    """

    def __init__(self, params_D: nn.Parameter, cfg: TrainingConfig, *, total_rounds: int) -> None:
        self.params_D, self.cfg, self.total_rounds = params_D, cfg, max(total_rounds, 1)
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                [params_D], lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adam":
            self.opt = torch.optim.Adam([params_D], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW([params_D], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_at(self, round_idx: int) -> float:
        base = self.cfg.learning_rate
        if self.cfg.lr_schedule == "cosine":
            return base * 0.5 * (1.0 + math.cos(math.pi * round_idx / self.total_rounds))
        return base

    def step(self, update_D: Tensor, round_idx: int, *, frozen_D: Tensor | None = None) -> float:
        """Apply one aggregated update; returns the learning rate used.

        ``frozen_D`` (bool, D): coordinates this step must leave alone, parameters and optimizer
        state (momentum, Adam moments) both: a zero update would still move them through momentum
        and weight decay (a pipeline stage whose update was skipped). Adam's step count is one per
        parameter vector and advances anyway.
        """
        lr = self.lr_at(round_idx)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.cfg.grad_clip is not None:
            norm = float(update_D.norm())
            if norm > self.cfg.grad_clip:
                update_D = update_D * (self.cfg.grad_clip / norm)
        frozen = frozen_D if frozen_D is not None and bool(frozen_D.any()) else None
        saved: list[tuple[Tensor, Tensor]] = []
        had_state: set[int] = set()
        if frozen is not None:
            saved = [(t, t[frozen].clone()) for t in [self.params_D.data, *self.state_vectors()]]
            had_state = {id(t) for t, _ in saved[1:]}
        self.params_D.grad = update_D
        self.opt.step()
        self.params_D.grad = None
        if frozen is not None:
            with torch.no_grad():
                for t, old in saved:
                    t[frozen] = old
                for t in self.state_vectors():  # created by this step: the frozen part starts at 0
                    if id(t) not in had_state:
                        t[frozen] = 0
        return lr

    def state_vectors(self) -> list[Tensor]:
        """The optimizer's per-coordinate state tensors (momentum buffer, Adam moments)."""
        state = self.opt.state.get(self.params_D, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == self.params_D.shape]

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)
