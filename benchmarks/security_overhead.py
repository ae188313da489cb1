"""The security layer's share of the round, with and without attack (issue 10, section 2).

Simulated rounds of ``configs/fmnist_defended.yaml`` (CNN, Fashion-MNIST, trimmed mean, stage-1
detection, stage-2 re-computation) at N in {16, 64} with N/4 Byzantine nodes running no attack,
sign flip or ALIE; per run: each phase's share of the round (warm-up rounds excluded), stage-2
re-computations per round and the detection result, so that a cheaper defence can be checked
against the same figures.

The spot-check budget (``security.spot_check_fraction``) is what a smaller overhead would trade
away: ``--spot 0.05,0.025`` repeats the table per budget, and the ``stealth`` attack measures what
the budget buys. It scales each Byzantine node's own update by 1.05 (not colluding) from round 20,
after the warm-up checks: invisible to stage 1 (it flags under 1% of those node-rounds), so only
spot checks find it, and its detection latency (rounds from the attack's start to quarantine,
median / max over the Byzantine nodes) is the budget's price. It runs ``--stealth-rounds`` rounds.

    python benchmarks/security_overhead.py     # prints a table, writes benchmarks/results/security_overhead.json
    python benchmarks/security_overhead.py --nodes 16 --attacks none,stealth --spot 0.05,0.025,0 \
        --out security_overhead_spot.json

Each setting runs ``--repeats`` times (default 3) and the table gives the median share with its
range: on this shared 2-core VM the same run's round time varies by 10-30% from one minute to the
next. The detection columns must agree across repeats (same seed): the benchmark checks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from trustworthy_dl.config import load_config
from trustworthy_dl.engine.run import run_experiment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


#: attack cases beyond the library's attack names: overrides
STEALTH = ["attack.name=scaling", "attack.params.scale=1.05", "attack.collude=false", "attack.start_round=20"]


def _run(n: int, attack: str, rounds: int, spot: float, seed: int = 0) -> dict:
    overrides = STEALTH if attack == "stealth" else [f"attack.name={attack}"]
    cfg = load_config(
        REPO / "configs" / "fmnist_defended.yaml",
        [
            f"seed={seed}",
            f"distributed.num_nodes={n}",
            *overrides,
            f"attack.num_byzantine={n // 4}",
            f"aggregation.params.f={n // 4}",
            f"security.spot_check_fraction={spot}",
            f"training.max_rounds={rounds}",
            f"training.eval_every={rounds * 10}",
            "output.progress=false",
            "output.plots=false",
        ],
    )
    res = run_experiment(cfg, write=False)
    recs = [r for r in res.history if r["round"] >= cfg.security.warmup_rounds]
    round_s = statistics.mean(sum(r["time"].values()) - r["time"].get("eval", 0.0) for r in recs)
    share = {
        p: statistics.mean(r["time"].get(p, 0.0) for r in recs) / round_s
        for p in ("compute", "security", "aggregate")
    }
    det = res.summary.get("detection", {})
    return {
        "seed": seed,
        "num_nodes": n,
        "attack": attack,
        "spot_check_fraction": spot,
        "rounds": rounds,
        "round_s": round(round_s, 4),
        "security_share": round(share["security"], 3),
        "compute_share": round(share["compute"], 3),
        "aggregate_share": round(share["aggregate"], 3),
        "recomputations_per_round": round(
            statistics.mean(r.get("security", {}).get("recomputations", 0) for r in recs), 2
        ),
        "tpr": det.get("tpr"),
        "fpr": det.get("fpr"),
        "stage1_tpr": det.get("stage1_tpr"),
        "latency": None
        if det.get("latency_rounds_median") is None
        else f"{det['latency_rounds_median']:g} / {det['latency_rounds_max']:g}",
        "caught": f"{det.get('detected', 0)} / {n // 4}" if attack != "none" else None,
    }


def _median_of(runs: list[dict]) -> dict:
    """The run of median security share, with the range over the repeats; detection must agree."""
    keys = ("tpr", "fpr", "recomputations_per_round", "latency")
    if any(tuple(r[k] for k in keys) != tuple(runs[0][k] for k in keys) for r in runs):
        raise SystemExit(f"repeats disagree on detection (same seed): {runs}")
    ordered = sorted(runs, key=lambda r: r["security_share"])
    row = dict(ordered[len(ordered) // 2])
    row["security_share_range"] = [ordered[0]["security_share"], ordered[-1]["security_share"]]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="16,64")
    ap.add_argument("--attacks", default="none,sign_flip,alie", help="attack names, or stealth (see above)")
    ap.add_argument("--spot", default="0.05", help="spot_check_fraction values (comma-separated)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--stealth-rounds", type=int, default=220)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="config seeds (comma-separated): one row per seed")
    ap.add_argument("--out", default="security_overhead.json", help="file name under benchmarks/results")
    args = ap.parse_args()
    rows = []
    for spot in (float(x) for x in args.spot.split(",")):
        for n in (int(x) for x in args.nodes.split(",")):
            for attack in args.attacks.split(","):
                for seed in (int(x) for x in args.seeds.split(",")):
                    rounds = args.stealth_rounds if attack == "stealth" else args.rounds
                    runs = [_run(n, attack, rounds, spot, seed) for _ in range(max(args.repeats, 1))]
                    rows.append(_median_of(runs))
                    print(json.dumps(rows[-1]), flush=True)
    cols = ["spot_check_fraction", "seed", "num_nodes", "attack", "rounds", "round_s", "security_share",
            "security_share_range", "compute_share", "aggregate_share", "recomputations_per_round",
            "tpr", "fpr", "stage1_tpr", "latency", "caught"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
