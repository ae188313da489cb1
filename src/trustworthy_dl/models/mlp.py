"""``mlp``: flatten, hidden ``Linear + ReLU`` layers, then a linear classifier.

Shapes: ``x_BCHW`` (any trailing shape) -> ``logits_BK``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from trustworthy_dl.models.registry import register_model

__all__ = ["MLP", "build_mlp"]

_HIDDEN = {"small": (128,), "default": (256, 128)}


class MLP(nn.Sequential):
    """Blocks ``hidden0, hidden1, ..., head``; the first block flattens its input."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, h in enumerate(hidden):
            layers = [nn.Flatten()] if i == 0 else []
            blocks[f"hidden{i}"] = nn.Sequential(*layers, nn.Linear(width, h), nn.ReLU())
            width = h
        blocks["head"] = nn.Linear(width, num_classes)
        super().__init__(blocks)


@register_model("mlp", sizes=tuple(_HIDDEN), default_size="default")
def build_mlp(
    *,
    size: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str,
    vocab_size: int,
    block_size: int,
) -> nn.Module:
    """Hidden widths: small (128,), default (256, 128). No normalisation (``norm`` is not used)."""
    del norm, vocab_size, block_size  # an MLP has no norm layers; image model
    return MLP(in_channels * image_size * image_size, _HIDDEN[size], num_classes)
