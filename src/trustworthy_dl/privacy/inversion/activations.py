"""What the node holding stage 2 of a pipeline reconstructs of stage 1's input.

In pipeline model parallelism the first stage's node sends its output activations a = f_1(x) to
the next stage's node every micro-batch. That node knows f_1's architecture and parameters (the
coordinator broadcasts every stage's update), so it can solve ``min_x' ||f_1(x') - a||^2`` for
the input: L-BFGS with a strong-Wolfe line search from a random start, inputs clamped to the
data's box after each step, the best finite point kept (the gradient-matching attacks' optimiser, here on activations
instead of gradients). The shallower the first stage, the closer a is to an invertible function
of x.

Legend: B images, C x H x W an image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["invert_activations"]


def invert_activations(
    stage: nn.Module,
    activations: Tensor,
    *,
    shape_BCHW: tuple[int, ...],
    box: tuple[float, float],
    iterations: int,
    seed: int = 0,
) -> tuple[Tensor, float]:
    """Inputs whose stage output matches ``activations``; returns (x', final squared error)."""
    target = activations.detach()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape_BCHW, generator=g).mul_(box[1] - box[0]).add_(box[0]).requires_grad_(True)
    was_training = stage.training
    stage.eval()
    for p in stage.parameters():
        p.requires_grad_(False)
    opt = torch.optim.LBFGS([x], lr=1.0, line_search_fn="strong_wolfe")
    last = [float("nan")]

    def closure() -> Tensor:
        opt.zero_grad()
        loss = ((stage(x) - target) ** 2).sum()
        loss.backward()
        last[0] = float(loss.detach())
        return loss

    best, best_x = float("inf"), x.detach().clone()
    try:
        for _ in range(iterations):
            opt.step(closure)
            with torch.no_grad():
                x.clamp_(box[0], box[1])
            if not (math.isfinite(last[0]) and bool(torch.isfinite(x).all())):
                break  # diverged: keep the best point so far
            if last[0] < best:
                best, best_x = last[0], x.detach().clone()
            if last[0] < 1e-12:
                break
    finally:
        for p in stage.parameters():
            p.requires_grad_(True)
        stage.train(was_training)
    return best_x, best
