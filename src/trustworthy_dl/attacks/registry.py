"""Attack registries: update attacks (rows of the (N, D) matrix), data attacks (a node's batch) and
pipeline attacks (what a stage holder sends or computes with)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trustworthy_dl.registry import Registry

__all__ = ["DATA_ATTACKS", "PIPELINE_ATTACKS", "UPDATE_ATTACKS", "attack_names"]

UPDATE_ATTACKS: Registry[Callable[..., Any]] = Registry("attack")
DATA_ATTACKS: Registry[Callable[..., Any]] = Registry("attack")
#: Attacks of a Byzantine pipeline stage holder (model / hybrid parallelism only).
PIPELINE_ATTACKS: Registry[Callable[..., Any]] = Registry("attack")


def attack_names() -> list[str]:
    """Every valid ``attack.name``: 'none', the update attacks and the data attacks."""
    return ["none", *sorted(UPDATE_ATTACKS.names() + DATA_ATTACKS.names() + PIPELINE_ATTACKS.names())]
