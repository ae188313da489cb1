"""Stage-1 detection in MANDERA's setting: F1 / TPR / FPR per attack, method, N and partition.

Issue 10, section 1: the default stage 1 (``mandera`` + ``distance``, "any") and each method
alone, the authors' algorithm (``mandera_paper``) included, on Fashion-MNIST with the small CNN,
batch 10 per node, 20% Byzantine nodes, for N in {16, 50, 100}, IID and Dirichlet 0.5, over 25
rounds of an honest trajectory (see ``_stage1.py``). Targets: F1 >= 0.99 on every attack and
FPR <= 1% with no attack. Per node-round counts; "none" has no positives, so only its FPR.

    python benchmarks/stage1_detection.py          # table; writes benchmarks/results/stage1_detection.json
    python benchmarks/stage1_detection.py --nodes 16 --partitions iid --rounds 5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import time

from _stage1 import ATTACKS, METHODS, RESULTS, score_grid

GRID_ATTACKS = tuple(a for a in ATTACKS if a != "mean_shift_mandera_z")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16,50,100")
    ap.add_argument("--partitions", default="iid,dirichlet")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        for part in args.partitions.split(","):
            t0 = time.perf_counter()
            cells = score_grid(
                n, n // 5, partition=part, rounds=args.rounds, seed=args.seed, attacks=GRID_ATTACKS
            )
            for (method, attack), c in cells.items():
                rows.append({"num_nodes": n, "byzantine": n // 5, "partition": part, "method": method,
                             "attack": attack, **c.rates()})  # fmt: skip
            print(f"N={n} {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    attacks = [a for a in GRID_ATTACKS if a != "none"]
    print("\nF1 per node-round (FPR with no attack in the last column; targets F1 >= 0.99, FPR <= 0.01)\n")
    print("| N | partition | method | " + " | ".join(attacks) + " | FPR, none |")
    print("|---|---|---|" + "---|" * (len(attacks) + 1))
    for n in sorted({r["num_nodes"] for r in rows}):
        for part in args.partitions.split(","):
            for method in METHODS:
                cell = {
                    r["attack"]: r
                    for r in rows
                    if (r["num_nodes"], r["partition"], r["method"]) == (n, part, method)
                }
                f1 = [f"{cell[a]['f1']:.3f}" if cell[a]["f1"] is not None else "-" for a in attacks]
                print(f"| {n} | {part} | {method} | " + " | ".join(f1) + f" | {cell['none']['fpr']:.4f} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "stage1_detection.json"
    out.write_text(json.dumps({"rounds": args.rounds, "seed": args.seed, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
