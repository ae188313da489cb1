"""Normalisation layers for the image models: ``make_norm("group" | "batch" | "none", channels)``.

GroupNorm is the default: it normalises each sample on its own, so a node's gradient does not depend
on which other samples share its batch, and ``torch.func.vmap`` over nodes needs no batch statistics
(BatchNorm updates running buffers in place, which vmap cannot do without
``torch.func.replace_all_batch_norm_modules_``).
"""

from __future__ import annotations

from torch import nn

from trustworthy_dl.errors import ConfigError

__all__ = ["NORMS", "group_count", "make_norm"]

NORMS = ("group", "batch", "none")


def group_count(channels: int, *, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Number of GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is at most
    ``max_groups`` and leaves at least ``min_channels_per_group`` channels per group (1 if none does).

    Wu & He (2018), "Group Normalization", use 32 groups; small networks (16 channels) get 4 groups of 4.
    """
    upper = min(max_groups, channels // min_channels_per_group)
    for groups in range(upper, 1, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(norm: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer over ``channels`` feature maps: GroupNorm, BatchNorm2d or Identity."""
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"norm {norm!r} is not one of: {', '.join(NORMS)}")
