"""Combine the defended and undefended acceptance sweeps into one table (markdown + JSON).

    CASES=benchmarks/acceptance_attacks.yaml
    tdl sweep configs/fmnist_defended.yaml --cases $CASES --grid data.partition=iid,dirichlet \\
        --out runs/acceptance/defended --jobs 2
    tdl sweep configs/fmnist_defended.yaml --cases $CASES --grid data.partition=iid,dirichlet \\
        --grid case=none,gaussian,zero_gradient,mean_shift,sign_flip,sign_flip_strong,scaling,scaling_strong,label_flip,alie,ipm,ipm_strong \\
        --set security.attack_detection=false --set security.gradient_verification=false \\
        --set aggregation.name=mean --out runs/acceptance/undefended --jobs 2
    python benchmarks/acceptance_table.py runs/acceptance

Checks the issue-4 targets and prints which hold. Cases whose name ends in ``_late`` (attack
starts after the verifier's warm-up) are reported but not part of the issue's targets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NON_STEALTHY = {"gaussian", "zero_gradient", "mean_shift", "sign_flip", "scaling"}
STEALTHY = {"alie", "ipm"}


def _setting(row: dict[str, Any]) -> str:
    params = {k.split(".")[-1]: v for k, v in row.items() if k.startswith("attack.params.")}
    start = row.get("attack.start_round")
    parts = [f"{k}={v}" for k, v in params.items()] + ([f"from round {start}"] if start else [])
    return ", ".join(parts) or "default"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/acceptance")
    dfd = {
        (r["case"], r["data.partition"]): r
        for r in json.loads((root / "defended" / "sweep.json").read_text())
    }
    und = {
        (r["case"], r["data.partition"]): r
        for r in json.loads((root / "undefended" / "sweep.json").read_text())
    }
    rows, checks = [], []
    lines = [
        "| attack | setting | data | accuracy, defended | accuracy, mean without defence | TPR | FPR "
        "| latency median / max (rounds) | re-computations / round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (case, part), d in dfd.items():
        attack = d["attack.name"]
        u = und.get((case, part), {})
        base_d = dfd[("none", part)]["test_accuracy"]
        base_u = und[("none", part)]["test_accuracy"]
        row = {
            "case": case,
            "attack": attack,
            "setting": _setting(d),
            "partition": part,
            "acc_defended": d["test_accuracy"],
            "acc_undefended": u.get("test_accuracy"),
            "tpr": d["tpr"],
            "fpr": d["fpr"],
            "latency_median": d["latency_median"],
            "latency_max": d["latency_max"],
            "recomputations_per_round": d["recomputations_per_round"],
        }
        rows.append(row)
        lat = "-" if d["latency_median"] is None else f"{d['latency_median']:.0f} / {d['latency_max']}"
        tpr = "-" if d["tpr"] is None else f"{d['tpr']:.3f}"
        acc_u = "-" if row["acc_undefended"] is None else f"{row['acc_undefended']:.4f}"
        lines.append(
            f"| {attack} | {row['setting']} | {part} | {d['test_accuracy']:.4f} | {acc_u} | "
            f"{tpr} | {d['fpr']:.4f} | {lat} | {d['recomputations_per_round']:.2f} |"
        )
        if case.endswith("_late"):
            continue
        if attack in NON_STEALTHY:
            checks.append(
                (
                    f"{case}/{part}: TPR>=0.99, FPR<=0.01, median latency<=3",
                    d["tpr"] >= 0.99 and d["fpr"] <= 0.01 and d["latency_median"] <= 3,
                )
            )
        elif attack in STEALTHY:
            checks.append((f"{case}/{part}: TPR>=0.9, FPR<=0.02", d["tpr"] >= 0.9 and d["fpr"] <= 0.02))
        elif attack == "none":
            limit = 0.01 if part == "iid" else 0.05
            checks.append((f"none/{part}: FPR<={limit}", d["fpr"] <= limit))
        if attack != "none":
            checks.append(
                (
                    f"{case}/{part}: defended accuracy >= no-attack accuracy - 1.5 points "
                    f"({d['test_accuracy']:.4f} vs {base_d:.4f})",
                    d["test_accuracy"] >= base_d - 0.015,
                )
            )
            row["undefended_loses_10_points"] = (
                row["acc_undefended"] is not None and row["acc_undefended"] < base_u - 0.10
            )
    for part in ("iid", "dirichlet"):
        # an attack counts once, at whichever of its measured strengths hurts the plain mean
        hurt = sorted(
            {r["attack"] for r in rows if r["partition"] == part and r.get("undefended_loses_10_points")}
        )
        checks.append(
            (
                f"{part}: plain mean without defence loses > 10 points on >= 5 attacks ({len(hurt)}: {', '.join(hurt)})",
                len(hurt) >= 5,
            )
        )
    table = "\n".join(lines) + "\n"
    print(table)
    for name, ok in checks:
        print(("PASS " if ok else "FAIL ") + name)
    (root / "acceptance.md").write_text(table)
    (root / "acceptance.json").write_text(
        json.dumps({"rows": rows, "checks": [[n, bool(o)] for n, o in checks]}, indent=2)
    )


if __name__ == "__main__":
    main()
