"""A finished sweep's tables: sweep.json, sweep.md, results.csv and the worst-case headline.

The headline is what robust-aggregation papers report: per defence (every axis but the attack
axes and the seed), the metric under each attack as mean +- std over seeds, its value with no
attack, and the worst case over attacks (the minimum of the means; the maximum for metrics where
lower is better, such as perplexity). Runs with ``attack.name: none`` form the no-attack column
and are left out of the worst case.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustworthy_dl.engine.sweep_file import SweepSpec

__all__ = [
    "headline",
    "headline_markdown",
    "markdown_table",
    "run_dir_of",
    "write_results_csv",
    "write_sweep_tables",
]

LOWER_IS_BETTER = {
    "perplexity",
    "backdoor_success",
    "test_loss",
    "loss",
    "fpr",
    "epsilon",
    "latency_median",
    "latency_max",
}


def run_dir_of(sweep_dir: Path, row: dict[str, Any]) -> Path:
    """A sweep row's run directory: as recorded, or by name under ``sweep_dir`` (a moved sweep)."""
    d = Path(str(row.get("dir", "")))
    return d if (d / "summary.json").exists() else sweep_dir / d.name


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


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One line per run, every column any row has (empty where a row lacks it)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def headline(
    rows: list[dict[str, Any]], *, axes: Sequence[str], over: Sequence[str], metric: str
) -> list[dict[str, Any]]:
    """Per defence: the metric per attack (mean, std, n over seeds), no attack, and the worst case."""
    lower = metric in LOWER_IS_BETTER
    defence_keys = [k for k in axes if k not in over and k != "seed"]
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[str] = []
    for r in rows:
        key = tuple(_hashable(r.get(k)) for k in defence_keys)
        g = groups.setdefault(key, {"defence": dict(zip(defence_keys, key)), "cells": {}, "clean": []})
        value = r.get(metric) if r.get("status") == "ok" else None
        if r.get("attack.name") == "none":
            if value is not None:
                g["clean"].append(float(value))
            continue
        label = "/".join(str(r.get(k)) for k in over) if over else metric
        if label not in order:
            order.append(label)
        cell = g["cells"].setdefault(label, [])
        if value is not None:
            cell.append(float(value))
    out = []
    for g in groups.values():
        attacks = {a: _stats(v) for a, v in g["cells"].items() if v}
        missing = [a for a in order if a in g["cells"] and not g["cells"][a]]
        worst = None
        if attacks:
            pick = max if lower else min
            name = pick(attacks, key=lambda a: attacks[a]["mean"])
            worst = {**attacks[name], "attack": name}
        out.append(
            {
                "defence": g["defence"],
                "attacks": {a: attacks.get(a) for a in order if a in g["cells"]},
                "no_attack": _stats(g["clean"]) if g["clean"] else None,
                "worst": worst,
                "missing": missing,
            }
        )
    return out


def _cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def headline_markdown(table: list[dict[str, Any]], metric: str) -> str:
    """The headline as a markdown table: one row per defence, one column per attack, then worst."""
    if not table:
        return ""
    dkeys = list(table[0]["defence"])
    attacks: list[str] = []
    for t in table:
        attacks += [a for a in t["attacks"] if a not in attacks]
    has_clean = any(t["no_attack"] for t in table)
    cols = [*dkeys, *(["no attack"] if has_clean else []), *attacks, "worst case"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for t in table:
        cells = [_fmt(t["defence"][k]) for k in dkeys]
        if has_clean:
            cells.append(_cell(t["no_attack"]))
        cells += [_cell(t["attacks"].get(a)) for a in attacks]
        w = t["worst"]
        cells.append(f"**{_cell(w)}** ({w['attack']})" if w else "-")
        if t["missing"]:
            cells[-1] += f" (failed: {', '.join(t['missing'])})"
        lines.append("| " + " | ".join(cells) + " |")
    direction = "maximum" if metric in LOWER_IS_BETTER else "minimum"
    note = f"\n{metric}; worst case = the {direction} over attacks of the mean over seeds.\n"
    return "\n".join(lines) + "\n" + note


def write_sweep_tables(rows: list[dict[str, Any]], out: Path, spec: SweepSpec, axes: Sequence[str]) -> None:
    """sweep.json, sweep.md and results.csv; headline.md / headline.json when there is something
    to take a worst case or a spread over (an attack axis or several seeds)."""
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    (out / "sweep.md").write_text(markdown_table(rows, spec.columns))
    write_results_csv(rows, out / "results.csv")
    over = [k for k in spec.headline_over() if k in axes]
    meta = {"axes": list(axes), "over": over, "metric": spec.metric, "base": spec.base}
    (out / "sweep_axes.json").write_text(json.dumps(meta, indent=2))
    if over or spec.seeds:
        table = headline(rows, axes=axes, over=over, metric=spec.metric)
        (out / "headline.json").write_text(
            json.dumps({"metric": spec.metric, "over": over, "rows": table}, indent=2)
        )
        (out / "headline.md").write_text(headline_markdown(table, spec.metric))
