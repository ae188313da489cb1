"""Combine the defended and undefended acceptance sweeps into one table (markdown + JSON).

    tdl sweep configs/fmnist_defended.yaml --grid attack.name=none,gaussian,zero_gradient,mean_shift,sign_flip,scaling,label_flip,alie,ipm \\
        --grid data.partition=iid,dirichlet --out runs/acceptance/defended --jobs 2
    tdl sweep configs/fmnist_defended.yaml --grid ...same... --set security.attack_detection=false \\
        --set security.gradient_verification=false --set aggregation.name=mean --out runs/acceptance/undefended --jobs 2
    python benchmarks/acceptance_table.py runs/acceptance

Checks the issue-4 targets and prints which hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NON_STEALTHY = {"gaussian", "zero_gradient", "mean_shift", "sign_flip", "scaling"}
STEALTHY = {"alie", "ipm"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/acceptance")
    dfd = {
        (r["attack.name"], r["data.partition"]): r
        for r in json.loads((root / "defended" / "sweep.json").read_text())
    }
    und = {
        (r["attack.name"], r["data.partition"]): r
        for r in json.loads((root / "undefended" / "sweep.json").read_text())
    }
    rows, checks = [], []
    lines = [
        "| attack | data | accuracy, defended | accuracy, mean without defence | TPR | FPR | latency median / max (rounds) | re-computations / round |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (attack, part), d in dfd.items():
        u = und.get((attack, part), {})
        base_d = dfd[("none", part)]["test_accuracy"]
        row = {
            "attack": attack,
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
        lines.append(
            f"| {attack} | {part} | {d['test_accuracy']:.4f} | {u.get('test_accuracy', float('nan')):.4f} | "
            f"{tpr} | {d['fpr']:.4f} | {lat} | {d['recomputations_per_round']:.2f} |"
        )
        if attack in NON_STEALTHY:
            checks.append(
                (
                    f"{attack}/{part}: TPR>=0.99, FPR<=0.01, median latency<=3",
                    d["tpr"] >= 0.99 and d["fpr"] <= 0.01 and d["latency_median"] <= 3,
                )
            )
        elif attack in STEALTHY:
            checks.append((f"{attack}/{part}: TPR>=0.9, FPR<=0.02", d["tpr"] >= 0.9 and d["fpr"] <= 0.02))
        elif attack == "none":
            limit = 0.01 if part == "iid" else 0.05
            checks.append((f"none/{part}: FPR<={limit}", d["fpr"] <= limit))
        if attack != "none":
            checks.append(
                (
                    f"{attack}/{part}: defended accuracy >= no-attack accuracy - 1.5 points "
                    f"({d['test_accuracy']:.4f} vs {base_d:.4f})",
                    d["test_accuracy"] >= base_d - 0.015,
                )
            )
    losers = [
        r["attack"] + "/" + r["partition"]
        for r in rows
        if r["attack"] != "none"
        and r["acc_undefended"] is not None
        and r["acc_undefended"] < und[("none", r["partition"])]["test_accuracy"] - 0.10
    ]
    by_part = {p: sum(1 for x in losers if x.endswith("/" + p)) for p in ("iid", "dirichlet")}
    checks.append(
        (
            f"plain mean without defence loses > 10 points on >= 5 attacks (iid: {by_part['iid']}, "
            f"dirichlet: {by_part['dirichlet']})",
            min(by_part.values()) >= 5,
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
