"""The seed README's "expected results", measured from a finished sweep: ``experiment.md/json``.

Six tables, each computed from the runs' summary.json and metrics.jsonl (nothing is estimated):

1. trust dynamics: final mean trust of the Byzantine and honest nodes, rounds to quarantine all;
2. detection: false-positive and false-negative rates over node-rounds and latency per attack and
   intensity;
3. accuracy and loss under attack, and the degradation against the same defence with no attack;
4. recovery after reassignment: rounds from the last quarantine until test accuracy is back within
   ``tolerance`` of the no-attack run at the same evaluation round;
5. reassignment overhead: events, seconds, share of the run's wall time;
6. throughput and peak memory with the security layer off and on (no attack), side by side.

The sweep needs an axis named ``defence`` (with the undefended setting first) and attack cases
(``attack.name`` per run); ``intensity`` is any other axis (e.g. ``attack.num_byzantine``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustworthy_dl.report.metrics import read_metrics
from trustworthy_dl.report.rundir import read_summary
from trustworthy_dl.report.sweep_tables import markdown_table, run_dir_of

__all__ = ["experiment_args", "experiment_tables", "run_experiment", "write_experiment_tables"]


def _load(sweep_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for row in json.loads((sweep_dir / "sweep.json").read_text()):
        if row.get("status") != "ok":
            continue
        d = run_dir_of(sweep_dir, row)
        runs.append(
            {
                "row": row,
                "summary": read_summary(d / "summary.json"),
                "records": read_metrics(d / "metrics.jsonl"),
            }
        )
    return runs


def _evals(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["round"]: float(r[key]) for r in records if key in r}


def _recovery(
    run: dict[str, Any], clean: dict[str, Any] | None, key: str, tolerance: float, lower: bool
) -> int | None:
    """Rounds from the last quarantine to the first evaluation within ``tolerance`` of the clean run."""
    rounds = [r["round"] for r in run["records"] if r.get("quarantined_now")]
    if not rounds or clean is None:
        return None
    last, mine, ref = max(rounds), _evals(run["records"], key), _evals(clean["records"], key)
    for r in sorted(mine):
        if r >= last and r in ref:
            gap = (mine[r] - ref[r]) if lower else (ref[r] - mine[r])
            if gap <= tolerance:
                return r - last
    return None


def experiment_tables(
    sweep_dir: str | Path, *, intensity: Sequence[str] = (), tolerance: float = 0.01
) -> dict[str, list[dict[str, Any]]]:
    """The six tables (lists of rows) of a finished sweep (see the module docstring)."""
    runs = _load(Path(sweep_dir))
    lm = any(r["summary"]["final"].get("perplexity") is not None for r in runs)
    key, metric = ("test_perplexity", "perplexity") if lm else ("test_accuracy", "test_accuracy")

    def ident(run: dict[str, Any]) -> dict[str, Any]:
        row = run["row"]
        return {
            "defence": row.get("defence"),
            "attack": row.get("attack.name"),
            **{k: row.get(k) for k in intensity},
        }

    clean = {r["row"].get("defence"): r for r in runs if r["row"].get("attack.name") == "none"}
    attacked = [r for r in runs if r["row"].get("attack.name") != "none"]
    out: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("trust", "detection", "performance", "recovery", "reassignment", "system")
    }
    for run in attacked:
        s, ident_row = run["summary"], ident(run)
        byz = set(s.get("byzantine_ids") or [])
        final_trust = (s.get("trust") or {}).get("final_scores")
        if final_trust:
            t = np.array(final_trust, dtype=float)
            hon = [i for i in range(len(t)) if i not in byz]
            det = s.get("detection") or {}
            out["trust"].append(
                {
                    **ident_row,
                    "byzantine_trust": float(t[sorted(byz)].mean()) if byz else None,
                    "honest_trust": float(t[hon].mean()),
                    "rounds_to_quarantine_all": det.get("latency_rounds_max")
                    if det.get("undetected") == 0
                    else None,
                }
            )
        det = s.get("detection") or {}
        if det.get("tpr") is not None:
            out["detection"].append(
                {
                    **ident_row,
                    "fp_rate": det.get("fpr"),
                    "fn_rate": 1.0 - det["tpr"],
                    "latency_median": det.get("latency_rounds_median"),
                    "latency_max": det.get("latency_rounds_max"),
                    "false_quarantines": det.get("false_quarantines"),
                }
            )
        ref = clean.get(run["row"].get("defence"))
        value, base = s["final"].get(metric), (ref["summary"]["final"].get(metric) if ref else None)
        extra = (
            {"backdoor_success": s["final"].get("backdoor_success")}
            if "backdoor_success" in s["final"]
            else {}
        )
        out["performance"].append(
            {
                **ident_row,
                metric: value,
                "no_attack": base,
                "degradation": (value - base if lm else base - value)
                if value is not None and base is not None
                else None,
                "test_loss": s["final"].get("test_loss"),
                "train_loss": s["final"].get("train_loss"),
                **extra,
            }
        )
        rec = s.get("reassignment") or {}
        if rec.get("events"):
            out["recovery"].append(
                {
                    **ident_row,
                    "recovery_rounds": _recovery(run, ref, key, tolerance if not lm else tolerance * 100, lm),
                }
            )
            wall = s.get("wall_s") or 0.0
            out["reassignment"].append(
                {
                    **ident_row,
                    "events": rec["events"],
                    "microseconds_total": 1e6 * rec.get("seconds_total", 0.0),
                    "share_of_wall_ppm": 1e6 * rec.get("seconds_total", 0.0) / wall if wall else None,
                }
            )
    for name, run in clean.items():
        s = run["summary"]
        split = s.get("time_split_s") or {}
        train = sum(v for k, v in split.items() if k != "eval")
        out["system"].append(
            {
                "defence": name,
                "samples_per_s": (s.get("throughput") or {}).get("samples_per_s"),
                "rounds_per_s": (s.get("throughput") or {}).get("rounds_per_s"),
                "peak_memory_mb": s.get("peak_memory_mb"),
                "security_share": (split.get("security", 0.0) + split.get("trust", 0.0)) / train
                if train
                else None,
            }
        )
    return out


TITLES = {
    "trust": "Trust score dynamics (final trust; rounds until every Byzantine node is quarantined)",
    "detection": "Attack detection: false-positive / false-negative rates over node-rounds, latency in rounds",
    "performance": "Model performance under attack (degradation against the same defence with no attack)",
    "recovery": "Recovery after reassignment: rounds from the last quarantine until the metric is back at the no-attack run's",
    "reassignment": "Task reassignment overhead (moving a shard's ownership; ppm = parts per million of the run's wall time)",
    "system": "Throughput and memory, security layer off and on (no attack)",
}


def write_experiment_tables(sweep_dir: str | Path, *, intensity: Sequence[str] = (), note: str = "") -> Path:
    """Write ``experiment.json`` and ``experiment.md`` into the sweep directory; returns the .md."""
    d = Path(sweep_dir)
    tables = experiment_tables(d, intensity=intensity)
    (d / "experiment.json").write_text(json.dumps(tables, indent=2))
    parts = [
        "# Experiment results (measured; simulated nodes, simulated attacks)\n",
        note + "\n" if note else "",
    ]
    for name, rows in tables.items():
        parts.append(
            f"\n## {TITLES[name]}\n\n" + (markdown_table(rows) if rows else "(none in this sweep)\n")
        )
    md = d / "experiment.md"
    md.write_text("".join(parts))
    return md


def experiment_args(doc: str, *, quick: str, out: str) -> argparse.Namespace:
    """The experiment scripts' shared options: --quick, --device, --out, --jobs."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--out", default=out, help="sweep directory (resumable)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    return p.parse_args()


def run_experiment(
    sweep: dict[str, Any], out: str | Path, *, jobs: int = 2, intensity: Sequence[str] = (), note: str = ""
) -> Path:
    """Write ``sweep`` as ``OUT/sweep.yaml``, run it with ``tdl sweep`` (resuming finished points),
    then write experiment.md / experiment.json and the HTML report; returns experiment.md."""
    import yaml

    from trustworthy_dl.cli import main
    from trustworthy_dl.errors import TdlError
    from trustworthy_dl.report.html_report import write_report

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    spec = d / "sweep.yaml"
    spec.write_text(yaml.safe_dump(sweep, sort_keys=False))
    if main(["sweep", str(spec), "--out", str(d), "--jobs", str(jobs), "--quiet"]) != 0:
        raise TdlError(f"the sweep in {str(d)!r} did not finish (see the run.log of the failed points)")
    md = write_experiment_tables(d, intensity=intensity, note=note)
    write_report(d)
    return md
