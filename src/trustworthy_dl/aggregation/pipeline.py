"""Building aggregators by name, and composing pre-aggregators in front of them.

``build_aggregator("krum", f=4, pre=[{"name": "nnm"}, {"name": "bucketing", "s": 2}])`` returns an
:class:`Aggregator`: call it as ``agg(updates_ND, weights_N=None, *, f=None) -> AggResult``.

* Each pre-stage maps the current rows to new rows (NNM: N -> N, bucketing: N -> ceil(N / s),
  clipping: N -> N). They only update a mixing matrix over the original rows (see ``_rows``), so a
  pipeline reads the (N, D) data once for its Gram matrix and once for the output.
* ``f`` is the number of Byzantine *original* nodes; every stage receives it unchanged (after
  bucketing at most f buckets hold a Byzantine node, so f stays the right count) and checks its
  tolerance condition against its own input size at call time. A stage dict may set its own
  ``f``. ``agg(..., f=k)`` overrides ``f`` for one call (e.g. after quarantining nodes).
* The result's ``weights_N`` are the coefficients of the original nodes in ``value_D`` (mapped
  back through every mixing stage); ``selected_N`` marks the original nodes that some selected row
  draws on (after bucketing: every member of a selected bucket).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from torch import Tensor

from trustworthy_dl.aggregation._checks import check_f, check_params, param_defaults
from trustworthy_dl.aggregation._parallel import single_threaded
from trustworthy_dl.aggregation._rows import Rows
from trustworthy_dl.aggregation.base import AGGREGATORS, PRE_AGGREGATORS, AggResult
from trustworthy_dl.aggregation.tolerance import ANY_F, max_f_of_rule, rows_after
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.registry import Registry

__all__ = ["Aggregator", "Stage", "aggregator_params", "build_aggregator", "get_aggregator"]


class Stage:
    """One configured rule (aggregator or pre-aggregator): the registered object and its params.

    Stateless rules are plain functions ``rule(updates, weights_N=None, *, f, **params)``; stateful
    ones are classes built once as ``Cls(f=f, **params)`` and called ``obj(updates, f=f)``.
    """

    def __init__(
        self, registry: Registry[Callable[..., Any]], kind: str, spec: Mapping[str, Any], f: int
    ) -> None:
        spec = dict(spec)
        if "name" not in spec:
            raise ConfigError(f"{kind} entry {spec!r} has no 'name'")
        name = spec.pop("name")
        target = registry.get(name)
        self.name = registry.canonical(name)
        self.kind = kind
        self.fixed_f = spec.pop("f", None)
        self.f = check_f(self.name, f if self.fixed_f is None else self.fixed_f)
        self.params = check_params(kind, self.name, target, spec)
        self.stateful = inspect.isclass(target)
        self.obj: Any = target(f=self.f, **self.params) if self.stateful else target

    def __call__(self, rows: Rows | Tensor, f: int | None) -> Any:
        f_now = self.f if (f is None or self.fixed_f is not None) else check_f(self.name, f)
        if self.stateful:
            return self.obj(rows, f=f_now)
        return self.obj(rows, f=f_now, **self.params)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.obj.state_dict()) if self.stateful else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.stateful:
            self.obj.load_state_dict(state)
        elif state:
            raise ConfigError(f"{self.kind} {self.name!r} is stateless; got state keys {sorted(state)}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}(f={self.f}{', ' if shown else ''}{shown})"


class Aggregator:
    """Pre-aggregators followed by an aggregator: ``agg(updates_ND, weights_N=None, *, f=None)``.

    Attributes:
        name: e.g. ``"nnm+krum"``.
        f: the configured number of Byzantine nodes tolerated.
    """

    def __init__(self, aggregator: Stage, pre: Sequence[Stage] = ()) -> None:
        self.aggregator = aggregator
        self.pre = list(pre)
        self.name = "+".join([p.name for p in self.pre] + [aggregator.name])
        self.f = aggregator.f

    def __call__(self, updates_ND: Tensor, weights_N: Any = None, *, f: int | None = None) -> AggResult:
        rows = Rows(updates_ND, weights_N, rule=self.name)
        # Small ops single-threaded, passes over the data split across threads (see _parallel).
        with single_threaded() if rows.X.device.type == "cpu" else nullcontext():
            for stage in self.pre:
                rows = stage(rows, f)
            out: AggResult = self.aggregator(rows, f)
        return out

    def max_f(self, n: int) -> int:
        """The largest f this chain runs with on ``n`` rows (-1: none), from the rules' declared
        conditions (:mod:`~trustworthy_dl.aggregation.tolerance`). A stage with its own fixed f
        that it cannot tolerate makes the chain unusable at this n (-1)."""
        best = ANY_F
        for stage in [*self.pre, self.aggregator]:
            limit = max_f_of_rule(stage.name, n, stage.params)
            if stage.fixed_f is not None:
                if stage.fixed_f > limit:
                    return -1
            else:
                best = min(best, limit)
            n = rows_after(stage.name, n, stage.params)
        return best

    def state_dict(self) -> dict[str, Any]:
        """Everything a stateful stage carries between rounds (CenteredClip's centre, RNG rounds)."""
        return {"aggregator": self.aggregator.state_dict(), "pre": [p.state_dict() for p in self.pre]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pre = list(state.get("pre", []))
        if len(pre) != len(self.pre):
            raise ConfigError(
                f"state has {len(pre)} pre-aggregator entries, pipeline {self.name!r} has {len(self.pre)}"
            )
        self.aggregator.load_state_dict(state.get("aggregator", {}))
        for stage, st in zip(self.pre, pre):
            stage.load_state_dict(st)

    def __repr__(self) -> str:
        return f"Aggregator({' -> '.join(map(repr, [*self.pre, self.aggregator]))})"


def build_aggregator(
    name: str,
    *,
    f: int,
    params: Mapping[str, Any] | None = None,
    pre: Sequence[Mapping[str, Any]] | None = None,
) -> Aggregator:
    """The aggregator ``name`` with ``params`` (which may override ``f``), after the ``pre`` stages.

    ``pre`` is a list of ``{"name": ..., **params}`` dicts, applied in order. Unknown names or
    parameters, wrong types and out-of-range values raise ConfigError listing the valid ones.
    """
    params = dict(params or {})
    spec = {"name": name, **params}
    f_agg = params.get("f", f)
    stages = []
    for p in pre or []:
        if not isinstance(p, Mapping):
            raise ConfigError(f"pre-aggregator entries must be mappings like {{'name': 'nnm'}}, got {p!r}")
        stages.append(Stage(PRE_AGGREGATORS, "pre-aggregator", p, f_agg))
    return Aggregator(Stage(AGGREGATORS, "aggregator", spec, f), stages)


def get_aggregator(
    name: str, *, f: int, pre: Sequence[Mapping[str, Any]] | None = None, **params: Any
) -> Aggregator:
    """``get_aggregator("krum", f=2)`` -> callable ``agg(updates_ND, weights_N=None) -> AggResult``."""
    return build_aggregator(name, f=f, params=params, pre=pre)


def aggregator_params(name: str, *, pre: bool = False) -> dict[str, Any]:
    """``{param: default}`` of the aggregator (or pre-aggregator) registered as ``name``."""
    reg = PRE_AGGREGATORS if pre else AGGREGATORS
    return param_defaults(reg.get(name))
