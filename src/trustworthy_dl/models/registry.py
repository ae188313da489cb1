"""Model registry: ``get_model(name, ...)`` builds a model whose ``forward(x)`` returns logits.

Image models take ``x_BCHW`` float and return ``logits_BK``; language models take ``ids_BL`` long
and return ``logits_BLV``. Models are built from code only (no download).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from trustworthy_dl.registry import Registry

__all__ = [
    "MODELS",
    "ModelSpec",
    "get_model",
    "list_models",
    "model_sizes",
    "register_architectures",
    "register_model",
]


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[..., nn.Module]
    sizes: tuple[str, ...]
    kind: Literal["image", "text"]
    default_size: str


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    *,
    sizes: tuple[str, ...] = ("default",),
    kind: Literal["image", "text"] = "image",
    default_size: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(*, size, num_classes, in_channels, image_size, norm, vocab_size, block_size)``."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(ModelSpec(builder, sizes, kind, default_size or sizes[0]))
        return builder

    return deco


def register_architectures(names: Iterable[str], build: Callable[..., nn.Module], module: str) -> None:
    """Register one-size image architectures: ``build(name, *, num_classes, in_channels, image_size, norm)``."""
    for name in names:

        def builder(
            *,
            size: str,
            num_classes: int,
            in_channels: int,
            image_size: int,
            norm: str,
            vocab_size: int,
            block_size: int,
            _name: str = name,
        ) -> nn.Module:
            del size, vocab_size, block_size  # one size; image model
            return build(
                _name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, norm=norm
            )

        builder.__name__ = builder.__qualname__ = f"build_{name}"
        builder.__doc__ = f"{name}: see :mod:`{module}`."
        register_model(name)(builder)


def list_models() -> list[str]:
    return MODELS.names()


def model_sizes(name: str) -> list[str]:
    return list(MODELS.get(name).sizes)


def model_kind(name: str) -> str:
    return MODELS.get(name).kind


def get_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    size: str | None = None,
    norm: str = "group",
    vocab_size: int = 256,
    block_size: int = 64,
) -> nn.Module:
    """Build model ``name``; an unknown name or size is an error that lists the valid ones."""
    spec = MODELS.get(name)
    size = size or spec.default_size
    if size not in spec.sizes:
        from trustworthy_dl.errors import ConfigError

        raise ConfigError(f"model {name!r} has no size {size!r}; valid: {', '.join(spec.sizes)}")
    if norm not in ("group", "batch", "none"):
        from trustworthy_dl.errors import ConfigError

        raise ConfigError(f"norm {norm!r} is not one of: group, batch, none")
    return spec.builder(
        size=size,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        norm=norm,
        vocab_size=vocab_size,
        block_size=block_size,
    )
