"""Round time and traffic: simulated vs torchrun (gather) vs torchrun (sharded aggregation).

For each model (the digits CNN, ResNet-20 on Fashion-MNIST) and N nodes, the same config runs
three ways on this machine:

* ``simulated``: one process hosting the N nodes, ``OMP_NUM_THREADS=<cores>``;
* ``gather``: ``torchrun`` with ``--procs`` processes (one thread each), rows to the coordinator
  by point-to-point messages, the aggregate back;
* ``sharded``: the same processes, ``aggregation.mode=sharded`` (all-to-all of column slices,
  the rule on each slice with the all-reduced Gram matrix, all-gather of the aggregate).

Round time is the training time per round (evaluation excluded) from each run's summary; the
communication share is the coordinator's time in the ``gather`` and ``broadcast`` phases over its
round; bytes are measured in each process's comm (payloads sent, per round). Rule: median
(coordinate-wise, shardable), so that every mode aggregates robustly.

    python benchmarks/distributed.py            # prints a table, writes benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

MODELS = {
    "cnn": ["model.name=cnn", "data.name=digits", "training.batch_size=32"],
    "resnet20": [
        "model.name=resnet20",
        "model.norm=group",
        "data.name=fashion-mnist",
        "training.batch_size=16",
    ],
}


def _run(mode: str, model: str, n: int, rounds: int, procs: int, threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"tdl-bench-{mode}-"))
    sets = [
        *MODELS[model],
        f"distributed.num_nodes={n}",
        f"training.max_rounds={rounds}",
        f"training.eval_every={rounds * 10}",
        "aggregation.name=median",
        "output.plots=false",
        "output.progress=false",
    ]
    if mode == "sharded":
        sets.append("aggregation.mode=sharded")
    prefix = (
        []
        if mode == "simulated"
        else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    )
    cmd = [sys.executable, *prefix, "-m", "trustworthy_dl", "run", "--quiet", "--out", str(out / "run")]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads if mode == "simulated" else 1))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {model} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "run" / "summary.json").read_text())
    split = summary["time_split_s"]
    train_s = summary["wall_s"] - split.get("eval", 0.0)
    comm_s = split.get("gather", 0.0) + split.get("broadcast", 0.0)
    row: dict = {
        "model": model,
        "num_nodes": n,
        "mode": mode,
        "processes": summary["processes"],
        "round_ms": round(1000 * train_s / rounds, 1),
        "comm_share": round(comm_s / train_s, 3) if mode != "simulated" else None,
        "num_params": summary["num_params"],
    }
    if "communication" in summary:
        per = summary["communication"]["bytes_per_round"]
        row["coordinator_received_per_round"] = per[0]["received"]
        row["max_sent_per_process_per_round"] = max(r["sent"] for r in per)
        row["max_sent_per_node_per_round"] = max(r["sent"] / max(1, len(r["nodes"])) for r in per)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="simulated run's threads")
    ap.add_argument("--models", default="cnn,resnet20")
    ap.add_argument("--nodes", default="4,8")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for n in (int(x) for x in args.nodes.split(",")):
            base = None
            for mode in ("simulated", "gather", "sharded"):
                row = _run(mode, model, n, args.rounds, args.procs, args.threads)
                base = row["round_ms"] if mode == "simulated" else base
                row["vs_simulated"] = round(row["round_ms"] / base, 2) if base else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = [
        ("model", "model"),
        ("num_nodes", "N"),
        ("mode", "mode"),
        ("processes", "procs"),
        ("round_ms", "round ms"),
        ("vs_simulated", "x simulated"),
        ("comm_share", "comm share"),
        ("max_sent_per_node_per_round", "max sent / node / round (B)"),
        ("coordinator_received_per_round", "coordinator recv / round (B)"),
    ]
    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k, _ in cols) + " |")
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "rounds": args.rounds,
        "procs": args.procs,
        "simulated_threads": args.threads,
        "cores": os.cpu_count(),
    }
    (RESULTS / "distributed.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
