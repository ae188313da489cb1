"""The pipeline / hybrid acceptance table (issue 8) from finished runs, with a PASS/FAIL per target.

Runs (see the README for the commands): ``gpt2_{clean,activation,gradient,parameter}`` and
``hybrid_{clean,defended,undefended}`` under one directory.

    python benchmarks/pipeline_acceptance.py runs/pipeline_acc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(root: Path, name: str) -> dict[str, Any] | None:
    p = root / name / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _row(name: str, s: dict[str, Any]) -> dict[str, Any]:
    det = s.get("detection", {})
    mig = s.get("migrations", {})
    lat = det.get("latency_rounds") or {}
    return {
        "run": name,
        "perplexity": s["final"].get("perplexity"),
        "test_accuracy": s["final"].get("test_accuracy"),
        "byzantine": s.get("byzantine_ids", []),
        "latency": lat,
        "tpr": det.get("tpr"),
        "fpr": det.get("fpr"),
        "false_quarantines": det.get("false_quarantines"),
        "migrations": [
            f"stage {e['stage']} (replica {e['replica']}): node {e['from']} -> {e['to']} at step {e['round']}"
            f", {e['bytes'] / 1e6:.2f} MB, restored from step {e['restored_from_round']}"
            for e in mig.get("events", [])
        ],
        "mean_migration_s": mig.get("mean_seconds"),
        "recovery_steps": s.get("recovery_steps"),
        "verification": s.get("verification", {}),
        "wall_s": s.get("wall_s"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline_acceptance.json")
    args = ap.parse_args()
    names = [
        "gpt2_clean", "gpt2_activation", "gpt2_gradient", "gpt2_parameter", "gpt2_activation_undefended",
        "hybrid_clean", "hybrid_defended", "hybrid_undefended",
    ]  # fmt: skip
    runs = {n: s for n in names if (s := _load(args.root, n)) is not None}
    rows = [_row(n, s) for n, s in runs.items()]
    print("| run | perplexity / accuracy | Byzantine | latency (steps) | TPR | FPR | migrations | "
          "recovery steps | verification / step |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        metric = f"{r['perplexity']:.3f}" if r["perplexity"] is not None else f"{r['test_accuracy']:.4f}"
        share = r["verification"].get("share_of_step_time")
        print(
            f"| {r['run']} | {metric} | {r['byzantine'] or '-'} | {r['latency'] or '-'} | {r['tpr'] if r['tpr'] is not None else '-'} | "
            f"{r['fpr']} | {'; '.join(r['migrations']) or '-'} | {r['recovery_steps'] if r['recovery_steps'] is not None else '-'} | "
            f"{'-' if share is None else f'{100 * share:.1f}%'} |"
        )
    checks: list[tuple[str, bool]] = []
    clean = runs.get("gpt2_clean")
    for a in ("activation", "gradient", "parameter"):
        s = runs.get(f"gpt2_{a}")
        if s is None or clean is None:
            continue
        lat = list((s["detection"].get("latency_rounds") or {}).values())
        checks.append(
            (
                f"gpt2 {a}: quarantined within 5 steps",
                bool(lat) and all(v is not None and v <= 5 for v in lat),
            )
        )
        to_spare = [e["to_spare"] for e in s["migrations"]["events"]]
        checks.append((f"gpt2 {a}: stage migrated to the spare", bool(to_spare) and all(to_spare)))
        ratio = s["final"]["perplexity"] / clean["final"]["perplexity"]
        checks.append((f"gpt2 {a}: perplexity within 5% of clean (x{ratio:.3f})", ratio <= 1.05))
    hc, hd, hu = runs.get("hybrid_clean"), runs.get("hybrid_defended"), runs.get("hybrid_undefended")
    if hc and hd:
        gap = hc["final"]["test_accuracy"] - hd["final"]["test_accuracy"]
        checks.append(
            (f"hybrid defended within 2 points of clean ({100 * gap:+.2f} points below)", gap <= 0.02)
        )
    if hc and hu:
        loss = hc["final"]["test_accuracy"] - hu["final"]["test_accuracy"]
        checks.append((f"hybrid undefended loses more than 10 points ({100 * loss:.2f})", loss > 0.10))
    for text, ok in checks:
        print(("PASS " if ok else "FAIL ") + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rows": rows, "checks": [{"check": t, "pass": ok} for t, ok in checks]}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
