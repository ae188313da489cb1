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

    def step(self, update_D: Tensor, round_idx: int) -> float:
        """Apply one aggregated update; returns the learning rate used."""
        lr = self.lr_at(round_idx)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.cfg.grad_clip is not None:
            norm = float(update_D.norm())
            if norm > self.cfg.grad_clip:
                update_D = update_D * (self.cfg.grad_clip / norm)
        self.params_D.grad = update_D
        self.opt.step()
        self.params_D.grad = None
        return lr

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)
