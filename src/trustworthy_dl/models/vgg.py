"""VGG ``vgg11`` / ``vgg13`` / ``vgg16`` (configurations A / B / D) for small images.

Simonyan & Zisserman (2015), "Very Deep Convolutional Networks for Large-Scale Image Recognition".
Each 3x3 conv is followed by a norm layer and ReLU; a 2x2 max-pool follows each group while the
feature map is still larger than 1x1 (so 8x8 digits work too). An adaptive average pool to 1x1 and
a small head (512 -> 512 -> classes) replace the 4096-wide ImageNet classifier, as usual for CIFAR.

Shapes: ``x_BCHW`` -> ``logits_BK``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from trustworthy_dl.models.norm import make_norm
from trustworthy_dl.models.registry import register_architectures

__all__ = ["VGG", "build_vgg"]

# Output channels of each conv; "M" is a 2x2 max-pool.
_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
_HEAD_WIDTH = 512


class VGG(nn.Sequential):
    """Blocks ``conv0, conv1, ..., head``: one ``conv -> norm -> ReLU [-> pool]`` unit per block."""

    def __init__(
        self, config: list[int | str], *, in_channels: int, image_size: int, num_classes: int, norm: str
    ) -> None:
        units: list[nn.Sequential] = []
        c, side = in_channels, image_size
        for item in config:
            if isinstance(item, str):  # "M"
                if side >= 2:  # once the map is 1x1 (small inputs) further pools are skipped
                    units[-1].append(nn.MaxPool2d(2))
                    side //= 2
            else:
                conv = nn.Conv2d(c, item, 3, padding=1, bias=norm == "none")
                units.append(nn.Sequential(conv, make_norm(norm, item), nn.ReLU()))
                c = item
        blocks: OrderedDict[str, nn.Module] = OrderedDict((f"conv{i}", u) for i, u in enumerate(units))
        blocks["head"] = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, _HEAD_WIDTH),
            nn.ReLU(),
            nn.Linear(_HEAD_WIDTH, num_classes),
        )
        super().__init__(blocks)


def build_vgg(name: str, *, num_classes: int, in_channels: int, image_size: int, norm: str) -> VGG:
    """VGG ``name`` (a key of ``_CONFIGS``)."""
    return VGG(
        _CONFIGS[name], in_channels=in_channels, image_size=image_size, num_classes=num_classes, norm=norm
    )


register_architectures(_CONFIGS, build_vgg, __name__)
