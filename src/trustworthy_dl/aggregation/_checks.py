"""Checks shared by every rule: hyperparameter specs, inputs, tolerance conditions.

Hyperparameters are keyword-only and annotated with their range, e.g.
``tau: Annotated[float, Range(gt=0)]``. :func:`check_params` reads those annotations, so an unknown
key, a wrong type or an out-of-range value is a :class:`ConfigError` raised when the aggregator is
built, before any training starts. Conditions that depend on the round (N, f) are checked at call
time by :func:`require`.

Legend: N nodes, D flat parameters.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import torch
from torch import Tensor

from trustworthy_dl.errors import ConfigError, NodeMessageError

__all__ = [
    "Fraction",
    "NonNegInt",
    "PosFloat",
    "PosInt",
    "Range",
    "check_f",
    "check_params",
    "check_updates",
    "check_weights",
    "param_defaults",
    "require",
]


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric hyperparameter (``None``: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, where: str, name: str, value: float) -> None:
        ok = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        if not ok or (isinstance(value, float) and math.isnan(value)):
            bounds = [
                f"{op} {b}" for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            ]
            shown = " and ".join(
                b for b, v in zip(bounds, (self.ge, self.gt, self.le, self.lt)) if v is not None
            )
            raise ConfigError(f"{where}: {name}={value!r} must be {shown}")


PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
Fraction = Annotated[float, Range(gt=0, le=1)]

# Parameters every rule takes that are not hyperparameters.
_NOT_PARAMS = {"self", "updates", "updates_ND", "weights_N", "f"}


def _hyperparameters(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    fn = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    sig = inspect.signature(fn)
    return {
        k: p
        for k, p in sig.parameters.items()
        if k not in _NOT_PARAMS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def param_defaults(target: Callable[..., Any]) -> dict[str, Any]:
    """``{name: default}`` of a rule's hyperparameters (``None`` where there is no default)."""
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in _hyperparameters(target).items()
    }


def _check_type(where: str, name: str, value: Any, hint: Any) -> None:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        _check_type(where, name, value, base)
        for m in meta:
            if isinstance(m, Range) and value is not None:
                m.check(where, name, value)
        return
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            try:
                _check_type(where, name, value, arm)
                return
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {name}={value!r} has the wrong type")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {name}={value!r} must be one of {', '.join(map(repr, choices))}")
        return
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: {name}={value!r} must be None")
        return
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # anything else (tensors, objects) is not checked here
        ok = True
    if not ok:
        raise ConfigError(f"{where}: {name}={value!r} must be a {getattr(hint, '__name__', hint)}")


def check_params(
    kind: str, name: str, target: Callable[..., Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate ``params`` against ``target``'s annotated keyword-only hyperparameters.

    Returns the params with ints given for float parameters converted to float.
    """
    specs = _hyperparameters(target)
    where = f"{kind} {name!r}"
    unknown = sorted(str(k) for k in params if k not in specs)
    if unknown:
        shown = ", ".join(f"{k}={v!r}" for k, v in param_defaults(target).items()) or "(none)"
        raise ConfigError(
            f"{where} has no parameter {', '.join(map(repr, unknown))}; valid (defaults): {shown}"
        )
    missing = [k for k, p in specs.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ConfigError(f"{where} needs parameter {', '.join(map(repr, missing))}")
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target, include_extras=True)  # type: ignore[misc]
    out = dict(params)
    for k, v in params.items():
        hint = hints.get(k)
        if hint is not None:
            _check_type(where, k, v, hint)
        if isinstance(v, int) and not isinstance(v, bool) and _base(hint) is float:
            out[k] = float(v)
    return out


def _base(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def check_f(rule: str, f: Any) -> int:
    """``f`` must be a non-negative int."""
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ConfigError(
            f"{rule}: f={f!r} must be a non-negative int (the number of Byzantine nodes tolerated)"
        )
    return f


def require(ok: bool, rule: str, *, f: int, n: int, condition: str, stage: str = "") -> None:
    """Raise ``ConfigError("krum cannot tolerate f=4 with n=9: needs 2f + 2 < n")`` unless ``ok``."""
    if not ok:
        after = f" (n counted after {stage})" if stage else ""
        raise ConfigError(f"{rule} cannot tolerate f={f} with n={n}{after}: needs {condition}")


def check_updates(updates_ND: Any, rule: str = "aggregator") -> Tensor:
    """A floating (N, D) tensor with N >= 1 and D >= 1; half precision is promoted to float32."""
    if not isinstance(updates_ND, Tensor):
        raise NodeMessageError(f"{rule}: updates must be a torch.Tensor, got {type(updates_ND).__name__}")
    if updates_ND.dim() != 2 or updates_ND.shape[0] < 1 or updates_ND.shape[1] < 1:
        raise NodeMessageError(
            f"{rule}: updates must have shape (N, D) with N, D >= 1, got {tuple(updates_ND.shape)}"
        )
    if not updates_ND.is_floating_point():
        raise NodeMessageError(f"{rule}: updates must be floating point, got {updates_ND.dtype}")
    if updates_ND.dtype not in (torch.float32, torch.float64):
        updates_ND = updates_ND.float()
    if updates_ND.stride(1) != 1:
        updates_ND = updates_ND.contiguous()
    return updates_ND


def check_weights(
    weights_N: Any, n: int, rule: str = "aggregator", device: torch.device | None = None
) -> Tensor:
    """Float64 (N,) weights, non-negative, finite, normalised to sum to 1 (None: uniform)."""
    if weights_N is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    w = torch.as_tensor(weights_N).detach().to(device=device, dtype=torch.float64).reshape(-1)
    if w.numel() != n:
        raise NodeMessageError(f"{rule}: weights_N has {w.numel()} entries for {n} nodes")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise NodeMessageError(f"{rule}: weights_N must be finite and non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise NodeMessageError(f"{rule}: weights_N sum to 0")
    return w / total
