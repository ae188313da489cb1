"""``lenet``: the LeNet of the DLG paper (Zhu et al. 2019, "Deep Leakage from Gradients").

As in the authors' code: three 5x5 convolutions (12 channels; strides 2, 2, 1; padding 2), each
followed by a sigmoid, then one linear layer, every weight and bias drawn from U(-0.5, 0.5). Sigmoids are twice differentiable everywhere, which
gradient-matching attacks need; no normalisation layers (``model.norm`` is ignored).

Shapes: ``x_BCHW`` -> ``logits_BK``; 28x28 -> 12 x 7 x 7 features, 32x32 -> 12 x 8 x 8.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from trustworthy_dl.models.registry import register_model

__all__ = ["LeNetDLG", "build_lenet"]


class LeNetDLG(nn.Sequential):
    """Blocks ``body, head``."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        side = (image_size + 1) // 2
        side = (side + 1) // 2
        super().__init__(
            OrderedDict(
                body=nn.Sequential(
                    nn.Conv2d(in_channels, 12, 5, padding=2, stride=2),
                    nn.Sigmoid(),
                    nn.Conv2d(12, 12, 5, padding=2, stride=2),
                    nn.Sigmoid(),
                    nn.Conv2d(12, 12, 5, padding=2, stride=1),
                    nn.Sigmoid(),
                ),
                head=nn.Sequential(nn.Flatten(), nn.Linear(12 * side * side, num_classes)),
            )
        )
        for p in self.parameters():  # the authors' initialisation: every weight and bias U(-0.5, 0.5)
            nn.init.uniform_(p, -0.5, 0.5)


@register_model("lenet", sizes=("default",), default_size="default")
def build_lenet(
    *,
    size: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str,
    vocab_size: int,
    block_size: int,
) -> nn.Module:
    """The DLG paper's LeNet for ``image_size`` x ``image_size`` inputs (sigmoid activations)."""
    del size, norm, vocab_size, block_size
    return LeNetDLG(in_channels, image_size, num_classes)
