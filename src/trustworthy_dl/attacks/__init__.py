"""Attacks: update attacks on the (N, D) matrix and data attacks on a node's batch.

``get_attack("alie", z=1.0)`` builds an update attack, ``get_data_attack("backdoor")`` a data
attack; :class:`AdversarialAttacker` applies the configured one in the round loop.
"""

from typing import Any, Literal

# Importing the attack modules registers them.
from trustworthy_dl.attacks import (  # noqa: F401
    alie,
    backdoor,
    ipm,
    label_flip,
    mean_shift,
    minmax,
    pipeline,
    simple,
)
from trustworthy_dl.attacks.attacker import AdversarialAttacker
from trustworthy_dl.attacks.backdoor import Backdoor, backdoor_success_rate, model_replacement
from trustworthy_dl.attacks.base import DataAttack, UpdateAttack, attack_param_defaults, build_attack
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.attacks.registry import DATA_ATTACKS, PIPELINE_ATTACKS, UPDATE_ATTACKS, attack_names
from trustworthy_dl.errors import ConfigError

__all__ = [
    "DATA_ATTACKS",
    "PIPELINE_ATTACKS",
    "UPDATE_ATTACKS",
    "AdversarialAttacker",
    "AttackContext",
    "Backdoor",
    "DataAttack",
    "UpdateAttack",
    "attack_names",
    "attack_params",
    "backdoor_success_rate",
    "get_attack",
    "get_data_attack",
    "list_attacks",
    "model_replacement",
]


def get_attack(name: str, **params: Any) -> UpdateAttack:
    """The update attack ``name`` with ``params``; unknown params or bad values raise ConfigError."""
    if name not in UPDATE_ATTACKS and name in DATA_ATTACKS:
        raise ConfigError(f"{name!r} is a data attack; use get_data_attack({name!r})")
    attack: UpdateAttack = build_attack(UPDATE_ATTACKS, name, params)
    return attack


def get_data_attack(name: str, **params: Any) -> DataAttack:
    """The data attack ``name`` with ``params``; unknown params or bad values raise ConfigError."""
    if name not in DATA_ATTACKS and name in UPDATE_ATTACKS:
        raise ConfigError(f"{name!r} is an update attack; use get_attack({name!r})")
    attack: DataAttack = build_attack(DATA_ATTACKS, name, params)
    return attack


def list_attacks(kind: Literal["all", "update", "data", "pipeline"] = "all") -> list[str]:
    """Registered attack names of one kind ('all' excludes 'none')."""
    if kind == "update":
        return UPDATE_ATTACKS.names()
    if kind == "data":
        return DATA_ATTACKS.names()
    if kind == "pipeline":
        return PIPELINE_ATTACKS.names()
    if kind == "all":
        return sorted(UPDATE_ATTACKS.names() + DATA_ATTACKS.names() + PIPELINE_ATTACKS.names())
    raise ConfigError(f"unknown attack kind {kind!r}; valid: all, update, data, pipeline")


def attack_params(name: str) -> dict[str, Any]:
    """``{param: default}`` of attack ``name`` (update or data), e.g. for ``tdl list attacks``."""
    registry = (
        DATA_ATTACKS
        if name in DATA_ATTACKS
        else PIPELINE_ATTACKS
        if name in PIPELINE_ATTACKS
        else UPDATE_ATTACKS
    )
    return attack_param_defaults(registry, name)
