"""Cut a model into consecutive pipeline stages, balanced by parameter count.

Every model in the zoo is an ordered list of blocks, each ``forward`` taking the previous block's
output: the image models are ``nn.Sequential`` (stem / conv units / residual blocks / head) and
GPT-2 exposes ``pipeline_blocks()`` (embedding | transformer blocks | ln_f + head).
:func:`split_into_stages` groups consecutive blocks into S stages so that composing the stages
computes exactly what the whole model computes.

The stages share parameters with the model (no copy). GPT-2's first and last stages share the tied
embedding matrix: a pipeline that places them on different nodes must keep the two copies equal
(sum their gradients).
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from trustworthy_dl.errors import ConfigError

__all__ = ["HasPipelineBlocks", "block_times", "count_parameters", "model_blocks", "split_into_stages"]


@runtime_checkable
class HasPipelineBlocks(Protocol):
    """A model that is not an ``nn.Sequential`` but can list its consecutive blocks."""

    def pipeline_blocks(self) -> list[nn.Module]: ...


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (a tied parameter counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The ordered blocks of ``model``; composing them in order gives ``model``'s forward."""
    if isinstance(model, HasPipelineBlocks):
        return list(model.pipeline_blocks())
    if isinstance(model, nn.Sequential):
        return list(model)
    raise ConfigError(
        f"{type(model).__name__} cannot be split into pipeline stages: it is not an nn.Sequential "
        "and has no pipeline_blocks() method"
    )


def split_into_stages(
    model: nn.Module, num_stages: int, *, block_weights: list[float] | None = None
) -> list[nn.Module]:
    """Cut ``model`` into ``num_stages`` consecutive ``nn.Sequential`` stages of whole blocks.

    The cut minimises the largest stage's weight: its parameter count, or the sum of
    ``block_weights`` (one per block, e.g. measured seconds, see :func:`block_times`). Stage ``s``
    takes stage ``s - 1``'s output; stage 0 takes the model's input and the last stage returns its logits.
    """
    blocks = model_blocks(model)
    if not 1 <= num_stages <= len(blocks):
        raise ConfigError(
            f"cannot cut {type(model).__name__} into {num_stages} stages: it has {len(blocks)} blocks "
            f"(num_stages must be in 1..{len(blocks)})"
        )
    if block_weights is not None and len(block_weights) != len(blocks):
        raise ConfigError(f"{len(block_weights)} block weights for {len(blocks)} blocks")
    weights: list[float] = (
        list(block_weights) if block_weights is not None else [float(count_parameters(b)) for b in blocks]
    )
    bounds = _balanced_bounds(weights, num_stages)
    return [nn.Sequential(*blocks[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def block_times(model: nn.Module, x: torch.Tensor, *, reps: int = 3) -> list[float]:
    """Median seconds of each block's forward + backward on ``x`` (a sample batch), for balancing
    stages by measured time rather than by parameters. The model's buffers (BatchNorm running
    statistics) are left as they were: the measurement is not training."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        return _block_times(model, x, reps)
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])


def _block_times(model: nn.Module, x: torch.Tensor, reps: int) -> list[float]:
    times: list[list[float]] = [[] for _ in model_blocks(model)]
    for _ in range(reps):
        h = x
        for i, block in enumerate(model_blocks(model)):
            h_in = h.detach().requires_grad_(h.is_floating_point())
            t0 = time.perf_counter()
            out = block(h_in)
            params = [p for p in block.parameters() if p.requires_grad]
            inputs = params + ([h_in] if h_in.requires_grad else [])
            if inputs:
                torch.autograd.grad(out.float().square().mean(), inputs, allow_unused=True)
            times[i].append(time.perf_counter() - t0)
            h = out.detach()
    return [statistics.median(t) for t in times]


def _balanced_bounds(weights: list[float], parts: int) -> list[int]:
    """Boundaries ``0 = b_0 < b_1 < ... < b_parts = n`` that minimise the largest part's weight.

    Dynamic programme over (parts used, blocks covered): O(parts * n^2), n is at most a few dozen.
    """
    n = len(weights)
    prefix: list[float] = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[j][i]: smallest possible largest part when the first i blocks form j non-empty parts.
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for j in range(1, parts + 1):
        for i in range(j, n - (parts - j) + 1):
            for m in range(j - 1, i):
                cost = max(best[j - 1][m], prefix[i] - prefix[m])
                if cost < best[j][i]:
                    best[j][i], cut[j][i] = cost, m
    bounds = [n]
    for j in range(parts, 0, -1):
        bounds.append(cut[j][bounds[-1]])
    return bounds[::-1]
