"""Simulated pipeline step time against the unsplit model, and the cost of cross-validation.

For GPT-2 tiny and ResNet-20 at S stages in {2, 4} and M replicas in {1, 2}: one step of the
simulated pipeline (M replicas x ``micro`` micro-batches through S stages, 1F1B, the gradient rows
written into each stage group) against one ordinary forward/backward of the unsplit model on the
same global batch (M x batch samples), and the verifier's re-runs at the default rate
(``security.pipeline_verify_rate`` = 0.1) as a share of the step. Medians of ``--reps`` steps.

    python benchmarks/pipeline.py            # prints a table, writes benchmarks/results/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from trustworthy_dl.engine.pipeline_exec import HolderPlan, StageRunner
from trustworthy_dl.engine.staged import StagedModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.models import get_model
from trustworthy_dl.security.pipeline_verify import PipelineVerifier

RESULTS = Path(__file__).resolve().parent / "results"


def _setup(name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, Task]:
    torch.manual_seed(0)
    if name == "gpt2-tiny":
        model = get_model("gpt2", size="tiny", vocab_size=65, block_size=64)
        x = torch.randint(0, 65, (batch, 64))
        return model, x, torch.randint(0, 65, (batch, 64)), Task("text")
    model = get_model("resnet20", num_classes=10, in_channels=1, image_size=28)
    return model, torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,)), Task("image")


def bench(name: str, stages: int, replicas: int, *, batch: int, micro: int, reps: int, rate: float) -> dict:
    model, x, y, task = _setup(name, batch * replicas)
    params = [p for p in model.parameters() if p.requires_grad]

    def unsplit() -> None:
        torch.autograd.grad(task.loss(model(x), y), params)

    def unsplit_micro() -> None:  # the same micro-batches, no stages: what micro-batching alone costs
        for xs, ys in zip(x.tensor_split(micro * replicas), y.tensor_split(micro * replicas)):
            torch.autograd.grad(task.loss(model(xs), ys) / (micro * replicas), params)

    staged = StagedModel(model, stages)
    runner = StageRunner(staged, task)
    rows = [torch.empty(replicas, d) for d in staged.stage_sizes()]
    plans = [HolderPlan()] * stages
    verifier = PipelineVerifier(rate=rate, seed=0)
    passes = []

    def step() -> None:
        passes.clear()
        for m in range(replicas):
            xs, ys = x[m * batch : (m + 1) * batch], y[m * batch : (m + 1) * batch]
            micro_b = list(zip(xs.tensor_split(micro), ys.tensor_split(micro)))
            passes.append(runner.run_replica(micro_b, plans, [r[m] for r in rows], schedule="1f1b"))

    floor_s, micro_s, step_s, verify_s = [], [], [], []
    holder = list(range(replicas * stages))
    for i in range(reps + 1):  # the first of each is a warm-up
        tm = time.perf_counter()
        unsplit_micro()
        t0 = time.perf_counter()
        unsplit()
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        verifier.check(runner, passes, holder, i)
        t3 = time.perf_counter()
        if i:
            floor_s.append(t1 - t0)
            micro_s.append(t0 - tm)
            step_s.append(t2 - t1)
            verify_s.append(t3 - t2)
    f, s, v = statistics.median(floor_s), statistics.median(step_s), statistics.mean(verify_s)
    return {
        "model": name,
        "stages": stages,
        "replicas": replicas,
        "global_batch": batch * replicas,
        "micro_batches": micro,
        "unsplit_step_s": round(f, 5),
        "pipeline_step_s": round(s, 5),
        "pipeline_over_unsplit": round(s / f, 3),
        "unsplit_micro_batched_s": round(statistics.median(micro_s), 5),
        "pipeline_over_micro_batched": round(s / statistics.median(micro_s), 3),
        "verify_rate": rate,
        "verify_s_mean": round(v, 5),
        "verify_share_of_step": round(v / s, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = ap.parse_args()
    print(
        "| model | S | M | unsplit step (s) | pipeline step (s) | pipeline / unsplit | "
        "pipeline / unsplit micro-batched | verification / step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, batch in (("gpt2-tiny", 16), ("resnet20", 64)):
        for stages in (2, 4):
            for replicas in (1, 2):
                rows.append(
                    bench(
                        name, stages, replicas, batch=batch, micro=args.micro, reps=args.reps, rate=args.rate
                    )
                )
                r = rows[-1]
                print(
                    f"| {name} | {stages} | {replicas} | {r['unsplit_step_s']:.4f} | {r['pipeline_step_s']:.4f} | "
                    f"{r['pipeline_over_unsplit']:.2f} | {r['pipeline_over_micro_batched']:.2f} | "
                    f"{100 * r['verify_share_of_step']:.1f}% |",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
