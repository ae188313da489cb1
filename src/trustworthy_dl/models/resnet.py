"""ResNets: CIFAR-style ``resnet20/32/56`` and ImageNet-style ``resnet18/50/101``.

He et al. (2016), "Deep Residual Learning for Image Recognition". CIFAR-style nets have three stages
of ``n = (depth - 2) / 6`` BasicBlocks with 16/32/64 channels; ImageNet-style nets have four stages
with 64/128/256/512 channels (BasicBlock for resnet18, Bottleneck for resnet50/101). A shortcut that
changes shape is a 1x1 convolution + norm (option B). For ``image_size <= 64`` the ImageNet stem is a
3x3 stride-1 conv with no max-pool, as is usual for CIFAR-sized inputs.

Shapes: ``x_BCHW`` -> ``logits_BK``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from trustworthy_dl.models.norm import make_norm
from trustworthy_dl.models.registry import register_architectures

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "build_resnet"]

_SMALL_IMAGE = 64  # up to this side length the stem keeps full resolution


def _conv(c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


def _shortcut(c_in: int, c_out: int, stride: int, norm: str) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(_conv(c_in, c_out, 1, stride, norm), make_norm(norm, c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first carries the stride."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.norm1 = _conv(c_in, width, 3, stride, norm), make_norm(norm, width)
        self.conv2, self.norm2 = _conv(width, width, 3, 1, norm), make_norm(norm, width)
        self.shortcut = _shortcut(c_in, width, stride, norm)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x_BCHW)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x_BCHW))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as in torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, norm: str) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1, self.norm1 = _conv(c_in, width, 1, 1, norm), make_norm(norm, width)
        self.conv2, self.norm2 = _conv(width, width, 3, stride, norm), make_norm(norm, width)
        self.conv3, self.norm3 = _conv(width, c_out, 1, 1, norm), make_norm(norm, c_out)
        self.shortcut = _shortcut(c_in, c_out, stride, norm)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x_BCHW)))
        out = torch.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return torch.relu(out + self.shortcut(x_BCHW))


class ResNet(nn.Sequential):
    """Blocks ``stem, layer1_0, layer1_1, ..., head``: each residual block is one pipeline block."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        in_channels: int,
        num_classes: int,
        norm: str,
        large_stem: bool,
    ) -> None:
        c = widths[0]
        if large_stem:
            stem = nn.Sequential(
                _conv(in_channels, c, 7, 2, norm),
                make_norm(norm, c),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, padding=1),
            )
        else:
            stem = nn.Sequential(_conv(in_channels, c, 3, 1, norm), make_norm(norm, c), nn.ReLU())
        blocks: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        for stage, (depth, width) in enumerate(zip(depths, widths), start=1):
            for i in range(depth):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks[f"layer{stage}_{i}"] = block(c, width, stride, norm)
                c = width * block.expansion
        blocks["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        super().__init__(blocks)


# name -> (block, blocks per stage, stage widths, CIFAR-style)
_ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], tuple[int, ...], bool]] = {
    "resnet20": (BasicBlock, (3, 3, 3), (16, 32, 64), True),
    "resnet32": (BasicBlock, (5, 5, 5), (16, 32, 64), True),
    "resnet56": (BasicBlock, (9, 9, 9), (16, 32, 64), True),
    "resnet18": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), False),
    "resnet50": (Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), False),
    "resnet101": (Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512), False),
}


def build_resnet(name: str, *, num_classes: int, in_channels: int, image_size: int, norm: str) -> ResNet:
    """ResNet ``name`` (a key of ``_ARCHS``); CIFAR-style nets always keep full resolution in the stem."""
    block, depths, widths, cifar = _ARCHS[name]
    large_stem = not cifar and image_size > _SMALL_IMAGE
    return ResNet(
        block,
        depths,
        widths,
        in_channels=in_channels,
        num_classes=num_classes,
        norm=norm,
        large_stem=large_stem,
    )


register_architectures(_ARCHS, build_resnet, __name__)
