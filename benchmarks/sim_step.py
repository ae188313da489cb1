"""Simulated round time vs one ordinary step on the whole N*b batch (the floor: same FLOPs).

For each model and N, runs real rounds of the simulated backend (``run_experiment``, plain mean,
no attack) and reads the per-phase times from its metrics; the floor is one forward/backward/SGD
step of the same model on the concatenated N*b batch. Prints a markdown table and writes JSON.

    python benchmarks/sim_step.py                      # cnn + gpt2-tiny, N in 4 16 32
    python benchmarks/sim_step.py --models cnn --nodes 16 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from trustworthy_dl.config import config_from_dict
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.task import Task
from trustworthy_dl.models import get_model

RESULTS = Path(__file__).parent / "results"

SETUPS = {
    # name: (model config, data config, optimizer)
    "cnn": ({"name": "cnn"}, {"name": "fashion-mnist"}, "sgd"),
    "cnn-digits": ({"name": "cnn"}, {"name": "digits"}, "sgd"),
    "gpt2-tiny": ({"name": "gpt2", "size": "tiny"}, {"name": "text", "block_size": 64}, "adamw"),
}


def _floor_step(setup: str, n: int, b: int, reps: int) -> float:
    """Median seconds of one ordinary training step on a batch of n*b samples."""
    model_cfg, data_cfg, opt_name = SETUPS[setup]
    torch.manual_seed(0)
    if model_cfg["name"] == "gpt2":
        model = get_model("gpt2", size="tiny", vocab_size=256, block_size=data_cfg["block_size"])
        x = torch.randint(0, 256, (n * b, data_cfg["block_size"]))
        y = torch.randint(0, 256, (n * b, data_cfg["block_size"]))
        task = Task("text")
    else:
        side = 8 if data_cfg["name"] == "digits" else 28
        model = get_model("cnn", num_classes=10, in_channels=1, image_size=side)
        x, y = torch.randn(n * b, 1, side, side), torch.randint(0, 10, (n * b,))
        task = Task("image")
    opt = (torch.optim.AdamW if opt_name == "adamw" else torch.optim.SGD)(model.parameters(), lr=1e-3)
    times = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sim_round(setup: str, n: int, b: int, rounds: int, mode: str) -> dict[str, float]:
    """Median per-round seconds of the simulated backend: the gradients, and the whole round."""
    model_cfg, data_cfg, opt_name = SETUPS[setup]
    warmup = 2
    cfg = config_from_dict(
        {
            "model": model_cfg,
            "data": data_cfg,
            "training": {
                "batch_size": b,
                "max_rounds": rounds + warmup,
                "optimizer": opt_name,
                "learning_rate": 1e-3,
                "eval_every": 10_000,
            },
            "distributed": {"num_nodes": n, "per_node_grads": mode},
            "output": {"progress": False, "plots": False},
        }
    )
    hist = run_experiment(cfg, write=False).history[warmup:-1]  # drop warm-up and the final (eval) round
    grads = [r["time"]["compute"] for r in hist]
    whole = [sum(v for k, v in r["time"].items() if k != "eval") for r in hist]
    return {"grads_s": statistics.median(grads), "round_s": statistics.median(whole)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["cnn", "gpt2-tiny"], choices=sorted(SETUPS))
    ap.add_argument("--nodes", nargs="+", type=int, default=[4, 16, 32])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--mode", default="loop", choices=["loop", "vmap", "compile_vmap"])
    ap.add_argument("--json", type=Path, default=RESULTS / "sim_step.json")
    args = ap.parse_args()

    rows = []
    print(
        f"per-node gradients: {args.mode}; batch {args.batch} per node; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| model | N | floor step (s) | gradients (s) | whole round (s) | gradients / floor | round / floor |"
    )
    print("|---|---|---|---|---|---|---|")
    for setup in args.models:
        for n in args.nodes:
            floor = _floor_step(setup, n, args.batch, reps=max(3, args.rounds // 2))
            sim = _sim_round(setup, n, args.batch, args.rounds, args.mode)
            row = {
                "model": setup,
                "N": n,
                "batch": args.batch,
                "mode": args.mode,
                "floor_s": floor,
                **sim,
                "grads_ratio": sim["grads_s"] / floor,
                "round_ratio": sim["round_s"] / floor,
            }
            rows.append(row)
            print(
                f"| {setup} | {n} | {floor:.4f} | {sim['grads_s']:.4f} | {sim['round_s']:.4f} | "
                f"{row['grads_ratio']:.2f} | {row['round_ratio']:.2f} |",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
