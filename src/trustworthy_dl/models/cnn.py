"""``cnn``: a small, fast CNN for 8x8 digits, 28x28 (Fashion-)MNIST and 32x32 CIFAR.

Two ``conv3x3 -> norm -> ReLU`` layers, a 2x2 max-pool after the first, an adaptive average pool to
4x4 after the second (so any ``image_size >= 2`` works), then one linear layer.

Shapes: ``x_BCHW`` -> ``logits_BK``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from trustworthy_dl.models.norm import make_norm
from trustworthy_dl.models.registry import register_model

__all__ = ["CNN", "build_cnn"]

_WIDTHS = {"small": (8, 16), "default": (16, 32)}
_POOLED = 4  # spatial side after the adaptive pool


class CNN(nn.Sequential):
    """Blocks ``conv1, conv2, head``."""

    def __init__(self, in_channels: int, widths: tuple[int, int], num_classes: int, norm: str) -> None:
        c1, c2 = widths
        bias = norm == "none"  # a norm layer's shift makes a conv bias redundant
        super().__init__(
            OrderedDict(
                conv1=nn.Sequential(
                    nn.Conv2d(in_channels, c1, 3, padding=1, bias=bias),
                    make_norm(norm, c1),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ),
                conv2=nn.Sequential(
                    nn.Conv2d(c1, c2, 3, padding=1, bias=bias),
                    make_norm(norm, c2),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(_POOLED),
                ),
                head=nn.Sequential(nn.Flatten(), nn.Linear(c2 * _POOLED * _POOLED, num_classes)),
            )
        )


@register_model("cnn", sizes=tuple(_WIDTHS), default_size="default")
def build_cnn(
    *,
    size: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str,
    vocab_size: int,
    block_size: int,
) -> nn.Module:
    """Conv widths: small (8, 16), default (16, 32). Any ``image_size >= 2`` works (adaptive pooling)."""
    del image_size, vocab_size, block_size  # adaptive pooling; image model
    return CNN(in_channels, _WIDTHS[size], num_classes, norm)
