"""How the cost of a defended round grows with N (issue 10, section 3).

For N nodes in {16, 32, 64, 128}: real simulated rounds of the CNN on Fashion-MNIST with the
default defence of ``configs/fmnist_defended.yaml`` (trimmed mean, stage-1 detection, stage-2
re-computation; no attack) and the same run undefended (security off), each phase's seconds per
round read from the run's own timings (the first round, a warm-up with every node re-computed,
excluded). Each run is repeated ``--repeats`` times (default 3), defended and undefended
alternating, and each phase's figure is the median over the repeats: this VM's speed drifts by
10-30% between minutes, which a single pair of runs reads as a defence cost or saving.
The exponent of each phase in N is the least-squares slope of log(time) on log(N).
Then the aggregator alone at N = 128 and D = 1.1e7 (ResNet-18 size), median of a few calls.

    python benchmarks/scale.py             # prints two tables, writes benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from trustworthy_dl.aggregation import get_aggregator
from trustworthy_dl.config import load_config
from trustworthy_dl.engine.run import run_experiment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PHASES = ("data", "compute", "security", "trust", "aggregate", "schedule", "step")


def _run(n: int, rounds: int, defended: bool) -> dict[str, float]:
    overrides = [
        f"distributed.num_nodes={n}",
        f"training.max_rounds={rounds}",
        f"training.eval_every={rounds * 10}",
        f"aggregation.params.f={n // 4}",
        "output.progress=false",
        "output.plots=false",
    ]
    if not defended:
        overrides += ["security.attack_detection=false", "security.gradient_verification=false"]
    cfg = load_config(REPO / "configs" / "fmnist_defended.yaml", overrides)
    res = run_experiment(cfg, write=False)
    warm = cfg.security.warmup_rounds if defended else 1
    recs = [r for r in res.history if r["round"] >= warm]
    out = {p: statistics.mean(r["time"].get(p, 0.0) for r in recs) for p in PHASES}
    out["round"] = statistics.mean(sum(r["time"].values()) - r["time"].get("eval", 0.0) for r in recs)
    return out


def _slope(ns: list[int], ys: list[float]) -> float | None:
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys, strict=True) if y > 0]
    if len(pts) < 2:
        return None
    mx = statistics.mean(p[0] for p in pts)
    my = statistics.mean(p[1] for p in pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return round(num / den, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16,32,64,128")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--agg-dim", type=float, default=1.1e7)
    ap.add_argument("--agg-nodes", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ns = [int(x) for x in args.nodes.split(",")]
    rows = []
    for n in ns:
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(max(args.repeats, 1)):  # alternating, so that drift hits both alike
            for defended in (False, True):
                runs[defended].append(_run(n, args.rounds, defended))
        d, u = (
            {k: statistics.median(r[k] for r in runs[flag]) for k in runs[flag][0]} for flag in (True, False)
        )
        # compute-matched: the undefended round plus what the defence adds (the same node work
        # runs in both, so the raw ratio mostly shows compute noise between the two runs)
        added = d["security"] + d["trust"] + d["schedule"]
        rows.append(
            {
                "num_nodes": n,
                "defended": d,
                "undefended": u,
                "ratio": round(d["round"] / u["round"], 2),
                "ratio_compute_matched": round((u["round"] + added) / u["round"], 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        "| N | round (s) defended | undefended | defended / undefended | compute-matched | "
        + " | ".join(PHASES)
        + " |"
    )
    print("|" + "---|" * (5 + len(PHASES)))
    for r in rows:
        d = r["defended"]
        print(
            f"| {r['num_nodes']} | {d['round']:.3f} | {r['undefended']['round']:.3f} | {r['ratio']} | "
            f"{r['ratio_compute_matched']} | " + " | ".join(f"{d[p]:.4f}" for p in PHASES) + " |"
        )
    exponents = {p: _slope(ns, [r["defended"][p] for r in rows]) for p in (*PHASES, "round")}
    print("exponent in N (defended): " + ", ".join(f"{k} {v}" for k, v in exponents.items()))
    # the aggregator alone at N = 128, D = 1.1e7
    n, dim = args.agg_nodes, int(args.agg_dim)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    agg_times = {}
    for rule in ("trimmed_mean", "median", "krum", "geometric_median"):
        agg = get_aggregator(rule, f=n // 4)
        agg(x)  # build native kernels, warm caches
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            agg(x)
            ts.append(time.perf_counter() - t0)
        agg_times[rule] = round(statistics.median(ts), 3)
        print(f"aggregator {rule} at N={n}, D={dim:.2g}: {agg_times[rule]} s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(
        json.dumps(
            {"rows": rows, "exponents": exponents, "aggregator_alone": agg_times, "rounds": args.rounds},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
