"""The two kinds of attack, building one from its name and params, and checks shared by all.

Legend: N nodes, H honest rows an attack sees, B Byzantine rows it returns, D flat parameters.

* An **update attack** is a callable ``(honest_HD, *, num_byzantine, generator, context) -> byz_BD``.
  What ``honest_HD`` holds depends on the attack's ``knowledge``:

  - ``"own"``: the updates the Byzantine nodes would have sent honestly, one row per Byzantine
    node (or one row, broadcast). Row ``i`` of the result is computed from row ``i``
    (sign-flip, scaling, non-finite) or is node ``i``'s own draw (gaussian).
  - ``"omniscient"``: the honest nodes' updates of the round (ALIE, IPM, min-max, ...). These
    attacks return one vector repeated ``num_byzantine`` times: they are collusive by nature.

* A **data attack** poisons one Byzantine node's batch: ``apply(x, y, *, generator, num_classes)``.

Attacks are small dataclasses whose fields are their parameters, so ``get_attack`` can check the
keys a config gives and list the valid ones. Randomness comes only from the ``torch.Generator``
passed in.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from trustworthy_dl.errors import ConfigError
from trustworthy_dl.registry import Registry

if TYPE_CHECKING:
    from trustworthy_dl.attacks.context import AttackContext

__all__ = ["DataAttack", "UpdateAttack", "attack_param_defaults", "build_attack"]


class UpdateAttack(ABC):
    """Replaces the Byzantine rows of the round's (N, D) update matrix."""

    knowledge: ClassVar[Literal["own", "omniscient"]] = "own"

    @abstractmethod
    def __call__(
        self,
        honest_HD: Tensor,
        *,
        num_byzantine: int,
        generator: torch.Generator | None = None,
        context: AttackContext | None = None,
    ) -> Tensor:
        """Return the (num_byzantine, D) updates the Byzantine nodes send."""


class DataAttack(ABC):
    """Poisons a Byzantine node's training batch; the node then computes its update honestly."""

    #: Model-replacement factor applied to the Byzantine node's update row (1: none).
    boost: float = 1.0

    @abstractmethod
    def apply(
        self, x: Tensor, y: Tensor, *, generator: torch.Generator, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        """Return a poisoned copy of the batch ``(x, y)``; the inputs are never modified."""


# --------------------------------------------------------------------------- building


def _params_of(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def attack_param_defaults(registry: Registry[Any], name: str) -> dict[str, Any]:
    """``{param: default}`` of the attack registered as ``name``."""
    return _params_of(registry.get(name))


def build_attack(registry: Registry[Any], name: str, params: dict[str, Any]) -> Any:
    """Instantiate ``registry[name](**params)``; unknown keys or bad values raise ConfigError."""
    cls = registry.get(name)
    canonical = registry.canonical(name)
    defaults = _params_of(cls)
    shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)"
    unknown = sorted(str(k) for k in params if k not in defaults)
    if unknown:
        raise ConfigError(
            f"attack {canonical!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters (defaults): {shown}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"attack {canonical!r}: {e}; valid parameters (defaults): {shown}") from e


# --------------------------------------------------------------------------- value checks


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if it is a real number in the given range, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def check_int(name: str, value: Any, *, low: int | None = None) -> int:
    """``value`` if it is an int (not a bool) >= ``low``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``choices``, else ValueError listing them."""
    v = value.lower() if isinstance(value, str) else value
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return str(v)


# --------------------------------------------------------------------------- shared helpers


def rowwise(honest_HD: Tensor, num_byzantine: int) -> Tensor:
    """``honest_HD`` as ``num_byzantine`` rows: one row is broadcast, B rows are kept as they are."""
    if honest_HD.dim() != 2:
        raise ValueError(f"honest updates must be 2-D (rows, D), got shape {tuple(honest_HD.shape)}")
    rows = honest_HD.shape[0]
    if rows == num_byzantine:
        return honest_HD
    if rows == 1:
        return honest_HD.expand(num_byzantine, -1)
    raise ValueError(f"a per-node attack needs 1 or num_byzantine={num_byzantine} rows, got {rows}")


def honest_mean_std(honest_HD: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and population std (``correction=0``) of the honest rows, in float32+."""
    if honest_HD.dim() != 2 or honest_HD.shape[0] < 1:
        raise ValueError(f"an omniscient attack needs >= 1 honest row, got shape {tuple(honest_HD.shape)}")
    x = honest_HD if honest_HD.dtype in (torch.float32, torch.float64) else honest_HD.float()
    return x.mean(0), x.std(0, correction=0)


def repeat_rows(vec_D: Tensor, num_byzantine: int, like: Tensor) -> Tensor:
    """``vec_D`` as ``num_byzantine`` identical rows with the dtype of ``like``."""
    return vec_D.to(like.dtype).unsqueeze(0).expand(num_byzantine, -1).clone()


def require_generator(name: str, generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise ValueError(f"attack {name!r} is random and needs a torch.Generator (generator=None given)")
    return generator
