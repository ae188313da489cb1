"""Sweep files: a whole experiment grid in one YAML, run by ``tdl sweep SWEEP.yaml --out DIR``.

    base: ../fmnist_defended.yaml          # the config every run starts from (relative to this file)
    set: {training.max_rounds: 200}        # overrides for every run
    grid:                                  # the product of these axes
      attack.name: [none, alie]
      aggregation.name: [mean, median]
    cases: ../../benchmarks/acceptance_attacks.yaml   # optional: one axis of named override sets
    axes:                                  # optional: more named axes (a file or an inline mapping)
      defence:
        median: {aggregation.name: median}
        default: {security.enabled: true}
    seeds: [0, 1, 2]                       # one more axis: the run seed
    headline: {metric: test_accuracy, over: [case]}   # worst case over these axes (default below)
    columns: [case, aggregation.name, test_accuracy]  # optional: the printed table's columns
    out: runs/grid                         # optional: the default of --out

The headline is the figure the robust-aggregation literature reports: for each defence (every axis
but the attack axes and the seed) the metric per attack as mean +- std over seeds, the no-attack
value, and the worst case over attacks. ``over`` defaults to ``attack.name`` and any named axis
called ``case`` or ``attack``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trustworthy_dl.config import read_yaml
from trustworthy_dl.errors import ConfigError

__all__ = ["SweepSpec", "is_sweep_file", "read_sweep_file", "yaml_text"]

_SWEEP_KEYS = {"base", "set", "grid", "cases", "axes", "seeds", "headline", "columns", "out"}
_ATTACK_AXES = ("attack.name", "case", "attack")

Cases = dict[str, dict[str, Any]]


@dataclass
class SweepSpec:
    """A parsed sweep file (or the equivalent command-line flags)."""

    base: str | None = None
    overrides: list[str] = field(default_factory=list)
    grid: list[list[tuple[str, str]]] = field(default_factory=list)  # axes of (key, YAML text)
    named: dict[str, Cases] = field(default_factory=dict)  # axis name -> case name -> overrides
    seeds: list[int] = field(default_factory=list)
    metric: str = "test_accuracy"
    over: list[str] | None = None
    columns: list[str] | None = None
    out: str | None = None

    def headline_over(self) -> list[str]:
        """The axes the worst case is taken over."""
        if self.over is not None:
            return list(self.over)
        keys = [k for axis in self.grid for k, _ in axis[:1]] + list(self.named)
        return [k for k in keys if k in _ATTACK_AXES]


def yaml_text(value: Any) -> str:
    """``value`` as the YAML text of a ``--set`` override that reads back as ``value``."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value and "," not in value:
                return value
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def is_sweep_file(path: str | Path | None) -> bool:
    """True when ``path`` is a YAML mapping of sweep keys only (``base``, ``grid``, ``seeds``, ...)."""
    if path is None or not str(path).endswith((".yaml", ".yml")):
        return False
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # let the config reader report it
    return isinstance(data, dict) and bool(data) and set(data) <= _SWEEP_KEYS


def _named_axis(value: Any, where: Path, what: str) -> Cases:
    from trustworthy_dl.engine.sweep import check_cases, read_cases

    if isinstance(value, str):
        p = Path(value)
        return read_cases(p if p.is_absolute() else where.parent / p)
    if isinstance(value, dict):
        return check_cases(value, f"sweep file {str(where)!r}: {what}")
    raise ConfigError(
        f"sweep file {str(where)!r}: {what} must be a cases file path or a mapping, got {value!r}"
    )


def read_sweep_file(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file; paths inside it are relative to the file."""
    p = Path(path)
    data = read_yaml(p, what="sweep file", holds="a mapping with base, set, grid, cases, axes, seeds")
    unknown = sorted(set(data) - _SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"sweep file {str(p)!r}: unknown key(s) {unknown}; allowed: {sorted(_SWEEP_KEYS)}")
    spec = SweepSpec()
    base = data.get("base")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"sweep file {str(p)!r}: base must be a config path, got {base!r}")
        b = Path(base)
        b = b if b.is_absolute() else p.parent / b
        if not b.is_file():
            raise ConfigError(f"sweep file {str(p)!r}: base config {str(b)!r} not found")
        spec.base = os.path.normpath(b)
    sets = data.get("set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"sweep file {str(p)!r}: set must map dotted keys to values, got {sets!r}")
    spec.overrides = [f"{k}={yaml_text(v)}" for k, v in sets.items()]
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep file {str(p)!r}: grid must map dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep file {str(p)!r}: grid.{key} must be a non-empty list of values, got {values!r}"
            )
        if key in ("seed", "case") or key in (data.get("axes") or {}):
            raise ConfigError(f"sweep file {str(p)!r}: grid key {key!r} is taken by another axis")
        spec.grid.append([(str(key), yaml_text(v)) for v in values])
    if data.get("cases") is not None:
        spec.named["case"] = _named_axis(data["cases"], p, "cases")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"sweep file {str(p)!r}: axes must map axis names to cases")
    for name, value in axes.items():
        if name in spec.named or name == "seed" or "." in str(name):
            raise ConfigError(f"sweep file {str(p)!r}: axis name {name!r} is taken or contains a dot")
        spec.named[str(name)] = _named_axis(value, p, f"axes.{name}")
    seeds = data.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ConfigError(f"sweep file {str(p)!r}: seeds must be a list of integers >= 0, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"sweep file {str(p)!r}: seeds {seeds} repeat a value")
        spec.seeds = list(seeds)
    head = data.get("headline") or {}
    if not isinstance(head, dict) or set(head) - {"metric", "over"}:
        raise ConfigError(f"sweep file {str(p)!r}: headline takes metric and over, got {head!r}")
    spec.metric = str(head.get("metric", spec.metric))
    if "over" in head:
        over = head["over"]
        if not isinstance(over, list) or not all(isinstance(o, str) for o in over):
            raise ConfigError(f"sweep file {str(p)!r}: headline.over must be a list of axis names")
        spec.over = over
    cols = data.get("columns")
    if cols is not None:
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise ConfigError(f"sweep file {str(p)!r}: columns must be a list of names")
        spec.columns = cols
    if data.get("out") is not None:
        out = Path(str(data["out"]))
        spec.out = os.path.normpath(out if out.is_absolute() else p.parent / out)
    return spec
