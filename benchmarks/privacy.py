"""The privacy layer's cost (issue 12): DP-SGD and node_clip round time over the non-private
round, per-sample gradients by torch.func.vmap against opacus's grad samplers, and the
inversion attacks' seconds per image.

Simulated rounds of ``configs/fmnist_defended.yaml`` without security (the privacy layer's own
cost) at N = 16, CNN, batch 32; the round time excludes evaluation and the first round (vmap's
tracing). The per-sample comparison times one node batch (B = 32) of the same CNN.

    python benchmarks/privacy.py      # prints a table, writes benchmarks/results/privacy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from trustworthy_dl.config import load_config
from trustworthy_dl.engine.run import run_experiment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _round_s(mode: str, rounds: int) -> float:
    sets = [
        f"training.max_rounds={rounds}",
        f"training.eval_every={rounds * 10}",
        "attack.name=none",
        "security.attack_detection=false",
        "security.gradient_verification=false",
        "output.progress=false",
        "output.plots=false",
    ]
    if mode != "off":
        sets += ["privacy.enabled=true", f"privacy.mode={mode}"]
    res = run_experiment(load_config(REPO / "configs" / "fmnist_defended.yaml", sets), write=False)
    recs = res.history[1:]
    return statistics.median(sum(r["time"].values()) - r["time"].get("eval", 0.0) for r in recs)


def _per_sample(repeats: int) -> dict[str, float]:
    from opacus import GradSampleModule

    from trustworthy_dl.engine.flat import FlatModel
    from trustworthy_dl.engine.task import Task
    from trustworthy_dl.models import get_model
    from trustworthy_dl.privacy import PerSampleClipper

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    flat = FlatModel(get_model("cnn", num_classes=10, in_channels=1, image_size=28))
    clipper = PerSampleClipper(flat, Task("image"), clip_norm=1.0)
    out = torch.empty(flat.num_params)

    def vmap_once() -> None:
        clipper.clipped_sum(x, y, out)

    gsm_model = get_model("cnn", num_classes=10, in_channels=1, image_size=28)
    gsm = GradSampleModule(gsm_model)

    def opacus_once() -> None:
        gsm.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
        g = torch.cat([p.grad_sample.reshape(32, -1) for p in gsm_model.parameters()], dim=1)
        norms = g.norm(dim=1, keepdim=True)
        (g * (1.0 / (norms + 1e-12)).clamp(max=1.0)).sum(0)

    def plain_once() -> None:
        loss = torch.nn.functional.cross_entropy(flat.model(x), y)
        torch.autograd.grad(loss, flat.params)

    out_s = {}
    for name, fn in (
        ("plain_backward", plain_once),
        ("vmap", vmap_once),
        ("opacus_grad_sample", opacus_once),
    ):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out_s[name] = (time.perf_counter() - t0) / repeats
    return out_s


def _inversion(images: int) -> dict[str, float]:
    from trustworthy_dl.privacy.inversion.audit import run_audit

    out = {}
    for attack, iters in (("idlg", 100), ("ig", 1000)):
        cfg = load_config(REPO / "configs" / "privacy_mnist_lenet.yaml", ["privacy.enabled=false"])
        rep = run_audit(cfg, Path("/tmp/tdl-privacy-bench") / attack, attack=attack, images=images,
                        iterations=iters, progress=False)  # fmt: skip
        out[attack] = rep["results"][0]["seconds_per_image"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    rounds = {m: _round_s(m, args.rounds) for m in ("off", "dp_sgd", "node_clip")}
    per_sample = _per_sample(20)
    inversion = _inversion(args.images)
    result = {
        "setting": "fmnist CNN, N = 16, batch 32, simulated, security off, median round after the first",
        "torch_threads": torch.get_num_threads(),
        "round_s": {k: round(v, 4) for k, v in rounds.items()},
        "ratio_over_non_private": {k: round(v / rounds["off"], 2) for k, v in rounds.items()},
        "per_sample_s_per_batch32": {k: round(v, 5) for k, v in per_sample.items()},
        "inversion_s_per_image": inversion,
    }
    print(f"{'mode':<12}{'round (s)':>12}{'x non-private':>16}")
    for k, v in rounds.items():
        print(f"{k:<12}{v:>12.4f}{v / rounds['off']:>16.2f}")
    print(f"\n{'per-sample method (B = 32)':<30}{'s / batch':>12}")
    for k, v in per_sample.items():
        print(f"{k:<30}{v:>12.5f}")
    print(f"\n{'inversion attack':<30}{'s / image':>12}")
    for k, v in inversion.items():
        print(f"{k:<30}{v:>12.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "privacy.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
