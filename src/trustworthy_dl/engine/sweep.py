"""``tdl sweep``: run a config over a grid of overrides and tabulate the results.

    tdl sweep configs/fmnist_defended.yaml --grid attack.name=none,gaussian,alie \
        --grid data.partition=iid,dirichlet --out runs/acceptance --jobs 2

Each grid point is an ordinary run in ``OUT/<key=value>-<key=value>/`` (so every figure traces
back to its metrics.jsonl); a point whose summary.json already exists is not run again, which
makes an interrupted sweep resumable. Runs execute as separate processes (``--jobs`` at a time,
one thread each), never sharing state.

``--cases FILE`` adds one more axis whose points are named sets of overrides, for settings that
must change together (an attack and its strength):

    # cases.yaml
    sign_flip: {attack.name: sign_flip, attack.params.scale: 4}
    ipm: {attack.name: ipm, attack.params.epsilon: 100}

    tdl sweep configs/fmnist_defended.yaml --cases cases.yaml --grid data.partition=iid,dirichlet ...

A case's point directory is named ``case=<name>-...`` and its row carries the case name and each
of its overrides as columns. ``--grid case=a,b`` runs only those cases of the file.

A sweep file (:mod:`trustworthy_dl.engine.sweep_file`) holds all of this, plus seeds and more named
axes, in one YAML: ``tdl sweep SWEEP.yaml --out DIR``. Every sweep writes sweep.json, sweep.md and
results.csv; one with an attack axis or seeds also writes the worst-case headline
(:mod:`trustworthy_dl.report.sweep_tables`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trustworthy_dl.config import load_config, read_yaml
from trustworthy_dl.engine.sweep_file import SweepSpec
from trustworthy_dl.errors import ConfigError, DataError
from trustworthy_dl.report.console import RunProgress
from trustworthy_dl.report.rundir import read_summary, run_outputs
from trustworthy_dl.report.sweep_tables import write_sweep_tables

__all__ = [
    "GridPoint",
    "check_cases",
    "parse_grid",
    "read_cases",
    "run_sweep",
    "spec_from_flags",
    "sweep_points",
]

GridPoint = tuple[tuple[str, str], ...]
Cases = dict[str, dict[str, Any]]

_CASE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]")


def parse_grid(items: Sequence[str]) -> list[GridPoint]:
    """``["a.b=1,2", "c.d=x"]`` -> every combination as ((key, value), ...)."""
    axes: list[list[tuple[str, str]]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like section.key=v1,v2,...")
        key, values = item.split("=", 1)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise ConfigError(f"--grid {item!r} lists no values")
        axes.append([(key.strip(), v) for v in vals])
    return [tuple(p) for p in itertools.product(*axes)] if axes else [()]


def read_cases(path: str | Path) -> Cases:
    """Read a cases file: a mapping ``name -> {dotted.key: value, ...}`` (values are YAML)."""
    p = Path(path)
    holds = "a mapping of case names to override mappings"
    data = read_yaml(p, what="cases file", holds=holds)
    if not data:
        raise ConfigError(f"cases file {str(p)!r} is empty: it must hold {holds}")
    return check_cases(data, f"cases file {str(p)!r}")


def check_cases(data: dict[Any, Any], where: str) -> Cases:
    """Check a mapping of case name -> overrides (``where`` names it in errors)."""
    cases: Cases = {}
    for name, body in data.items():
        if not isinstance(name, str) or not _CASE_NAME.match(name):
            raise ConfigError(f"{where}: case name {name!r} must be letters, digits and _ . + - only")
        if not isinstance(body, dict) or not body:
            raise ConfigError(f"{where}: case {name!r} must map dotted config keys to values, got {body!r}")
        for key in body:
            if not isinstance(key, str) or not key.strip(".") or key == "case":
                raise ConfigError(f"{where}: case {name!r} has a bad key {key!r}")
        cases[name] = dict(body)
    return cases


def _overrides(point: GridPoint, named: dict[str, Cases]) -> list[str]:
    out: list[str] = []
    for k, v in point:
        if k in named:
            out += [f"{key}={json.dumps(val)}" for key, val in named[k][v].items()]
        else:
            out.append(f"{k}={v}")
    return out


def _set_aside(d: Path) -> None:
    """Move an interrupted point's files into ``d/interrupted-<k>/`` (kept, never deleted)."""
    k = 1
    while (d / f"interrupted-{k}").exists():
        k += 1
    keep = d / f"interrupted-{k}"
    keep.mkdir()
    # the whole run, its checkpoint and fault log too (the fresh attempt would overwrite or report
    # them as its own), with the config and the point's log
    for f in [*run_outputs(d), *(d / n for n in ("config.yaml", "run.log") if (d / n).exists())]:
        f.rename(keep / f.name)


def _check_same_config(d: Path, expected: dict[str, Any]) -> None:
    """Refuse to reuse a finished point whose config.yaml differs from what the sweep would run."""
    try:
        saved = yaml.safe_load((d / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"sweep point {str(d)!r} has a summary.json but no readable config.yaml ({err})"
        ) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"sweep point {str(d)!r}: config.yaml is not a mapping")
    for section in sorted(set(saved) | set(expected)):
        if section == "output":
            continue
        a, b = saved.get(section), expected.get(section)
        if a != b:
            raise ConfigError(
                f"sweep point {str(d)!r} already holds a finished run with a different {section!r} section "
                f"({a!r} there, {b!r} now); use another --out or remove that directory"
            )


def _point_dir(out: Path, point: GridPoint) -> Path:
    name = "-".join(f"{k.split('.')[-1]}={v}" for k, v in point) or "base"
    return out / _UNSAFE.sub("_", name)


def sweep_points(spec: SweepSpec) -> list[GridPoint]:
    """Every point of the sweep: named axes (all their cases, in file order) in front, unless a grid
    axis of the same name picks some of them; then the grid axes; the seeds last."""
    named = spec.named
    for axis in spec.grid:
        key = axis[0][0]
        if key in named:
            unknown = sorted({v for _, v in axis} - set(named[key]))
            if unknown:
                raise ConfigError(
                    f"--grid {key}=: no case named {unknown} in the {key} axis; it has {sorted(named[key])}"
                )
        elif key == "case":
            raise ConfigError("--grid case=... needs --cases FILE naming those cases")
    picked = {axis[0][0] for axis in spec.grid}
    axes = [[(name, c) for c in cases] for name, cases in named.items() if name not in picked]
    axes += [list(axis) for axis in spec.grid]
    if spec.seeds:
        axes.append([("seed", str(s)) for s in spec.seeds])
    return [tuple(p) for p in itertools.product(*axes)] if axes else [()]


def spec_from_flags(
    config: str | None,
    grid: Sequence[str],
    *,
    overrides: Sequence[str] = (),
    cases: Cases | None = None,
    columns: Sequence[str] | None = None,
) -> SweepSpec:
    """The sweep the ``--grid`` / ``--cases`` / ``--set`` flags describe."""
    axes = [[point[0] for point in parse_grid([item])] for item in grid]
    return SweepSpec(
        base=config,
        overrides=list(overrides),
        grid=axes,
        named={"case": cases} if cases else {},
        columns=list(columns) if columns else None,
    )


def run_sweep(spec: SweepSpec, *, out: Path, jobs: int = 1, progress: bool = False) -> list[dict[str, Any]]:
    """Run every point of ``spec`` (skipping finished ones); write sweep.json, sweep.md, results.csv
    and, when the sweep has an attack axis or seeds, the headline (headline.md, headline.json)."""
    config, overrides, named = spec.base, spec.overrides, spec.named
    points = sweep_points(spec)
    resolved: dict[GridPoint, dict[str, Any]] = {}
    for point in points:  # validate every point before spending any time
        try:
            resolved[point] = load_config(config, [*overrides, *_overrides(point, named)]).to_dict()
        except ConfigError as err:
            label = " ".join(f"{k}={v}" for k, v in point)
            raise ConfigError(f"sweep point {label}: {err}") from None
    dirs = [_point_dir(out, p) for p in points]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(
            "two sweep points map to the same directory (axes ending in the same key name with equal "
            "values); rename a case or drop a duplicate value"
        )
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in points if not (_point_dir(out, p) / "summary.json").exists()]
    for point in points:  # a finished point is reused only if it ran this very config
        if point not in todo:
            _check_same_config(_point_dir(out, point), resolved[point])
    print(
        f"sweep: {len(points)} points, {len(points) - len(todo)} already done, {len(todo)} to run, {jobs} at a time",
        flush=True,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: list[tuple[GridPoint, subprocess.Popen[bytes], float]] = []
    failures: list[str] = []
    queue = list(todo)
    bar = RunProgress(len(todo), enabled=progress and bool(todo), description="sweep", unit="runs")
    while queue or running:
        while queue and len(running) < max(1, jobs):
            point = queue.pop(0)
            d = _point_dir(out, point)
            if d.exists() and (d / "metrics.jsonl").exists():  # an interrupted point: start it afresh
                _set_aside(d)
            cmd = [
                sys.executable,
                "-m",
                "trustworthy_dl",
                "run",
                *([config] if config else []),
                "--quiet",
                "--out",
                str(d),
            ]
            for o in [*overrides, *_overrides(point, named)]:
                cmd += ["--set", o]
            d.mkdir(parents=True, exist_ok=True)
            with (d / "run.log").open("wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((point, proc, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            point, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            label = " ".join(f"{k}={v}" for k, v in point)
            if proc.returncode != 0:
                failures.append(label)
                print(
                    f"  FAILED ({proc.returncode}) {label}: see {_point_dir(out, point) / 'run.log'}",
                    flush=True,
                )
            else:
                print(f"  done {label} in {time.perf_counter() - t0:.1f} s", flush=True)
            bar.advance(label)
    bar.close()
    rows = [_row(point, _point_dir(out, point), named) for point in points]
    write_sweep_tables(rows, out, spec, [k for k, _ in points[0]])
    if failures:
        raise ConfigError(f"{len(failures)} sweep point(s) failed: {'; '.join(failures)}")
    return rows


def _row(point: GridPoint, d: Path, named: dict[str, Cases]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in point:
        row[k] = v
        if k in named:
            row.update(named[k][v])
    path = d / "summary.json"
    if not path.exists():
        return {**row, "status": "missing"}
    try:
        s = read_summary(path)
    except DataError as err:  # one damaged point does not lose the sweep's table
        return {**row, "status": f"unreadable summary: {err}"}
    det = s.get("detection") or {}
    row.update(
        status="ok",
        test_accuracy=s["final"].get("test_accuracy"),
        perplexity=s["final"].get("perplexity"),
        backdoor_success=s["final"].get("backdoor_success"),
        distorted_fraction=(s.get("redundancy") or {}).get("distorted_fraction"),
        epsilon=(s.get("privacy") or {}).get("epsilon"),
        tpr=det.get("tpr"),
        fpr=det.get("fpr"),
        precision=det.get("precision"),
        latency_median=det.get("latency_rounds_median"),
        latency_max=det.get("latency_rounds_max"),
        false_quarantines=det.get("false_quarantines"),
        recomputations_per_round=(det.get("verification") or {}).get("recomputations_per_round"),
        rounds=s.get("rounds"),
        wall_s=s.get("wall_s"),
        dir=str(d),
    )
    return row
