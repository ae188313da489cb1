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
from trustworthy_dl.errors import ConfigError

__all__ = ["GridPoint", "parse_grid", "read_cases", "run_sweep"]

GridPoint = tuple[tuple[str, str], ...]
Cases = dict[str, dict[str, Any]]

_CASE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


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
    cases: Cases = {}
    for name, body in data.items():
        if not isinstance(name, str) or not _CASE_NAME.match(name):
            raise ConfigError(
                f"cases file {str(p)!r}: case name {name!r} must be letters, digits and _ . + - only"
            )
        if not isinstance(body, dict) or not body:
            raise ConfigError(
                f"cases file {str(p)!r}: case {name!r} must map dotted config keys to values, got {body!r}"
            )
        for key in body:
            if not isinstance(key, str) or not key.strip(".") or key == "case":
                raise ConfigError(f"cases file {str(p)!r}: case {name!r} has a bad key {key!r}")
        cases[name] = dict(body)
    return cases


def _overrides(point: GridPoint, cases: Cases) -> list[str]:
    out: list[str] = []
    for k, v in point:
        if k == "case":
            out += [f"{key}={json.dumps(val)}" for key, val in cases[v].items()]
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
    for f in ("metrics.jsonl", "config.yaml", "run.log"):
        if (d / f).exists():
            (d / f).rename(keep / f)


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
    return out / name.replace("/", "_")


def run_sweep(
    config: str | None,
    grid: Sequence[str],
    *,
    out: Path,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    columns: Sequence[str] | None = None,
    cases: Cases | None = None,
) -> list[dict[str, Any]]:
    """Run every grid point (skipping finished ones) and write sweep.json and sweep.md into ``out``.

    ``cases`` (from :func:`read_cases`) adds a ``case`` axis in front of the ``grid`` axes.
    """
    cases = cases or {}
    points = parse_grid(grid)
    picked = [v for p in points for k, v in p if k == "case"]
    if picked and not cases:
        raise ConfigError("--grid case=... needs --cases FILE naming those cases")
    unknown = sorted(set(picked) - set(cases))
    if unknown:
        raise ConfigError(f"--grid case=: no case named {unknown} in the cases file; it has {sorted(cases)}")
    if cases and not picked:  # every case in the file, in file order
        points = [(("case", name), *p) for name in cases for p in points]
    resolved: dict[GridPoint, dict[str, Any]] = {}
    for point in points:  # validate every point before spending any time
        try:
            resolved[point] = load_config(config, [*overrides, *_overrides(point, cases)]).to_dict()
        except ConfigError as err:
            label = " ".join(f"{k}={v}" for k, v in point)
            raise ConfigError(f"sweep point {label}: {err}") from None
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
            for o in [*overrides, *_overrides(point, cases)]:
                cmd += ["--set", o]
            d.mkdir(parents=True, exist_ok=True)
            log = (d / "run.log").open("wb")
            running.append(
                (
                    point,
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                    time.perf_counter(),
                )
            )
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
    rows = [_row(point, _point_dir(out, point), cases) for point in points]
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    (out / "sweep.md").write_text(markdown_table(rows, columns))
    if failures:
        raise ConfigError(f"{len(failures)} sweep point(s) failed: {'; '.join(failures)}")
    return rows


def _row(point: GridPoint, d: Path, cases: Cases) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in point:
        row[k] = v
        if k == "case":
            row.update(cases[v])
    path = d / "summary.json"
    if not path.exists():
        return {**row, "status": "missing"}
    s = json.loads(path.read_text())
    det = s.get("detection") or {}
    row.update(
        status="ok",
        test_accuracy=s["final"].get("test_accuracy"),
        perplexity=s["final"].get("perplexity"),
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


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The sweep's rows as a markdown table (grid keys first, then the chosen figures)."""
    if not rows:
        return ""
    cols = list(columns or [c for c in rows[0] if c not in ("status", "dir")])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
