"""The privacy audit of a pipeline: the node holding stage 2 inverts stage 1's activations.

For each requested round the stage-1 module is the one the config's pipeline run has after that
many rounds (trained here, simulated); node 0's first ``images x batch_size`` training samples,
micro-batch by micro-batch, go through it, and :func:`invert_activations` reconstructs them from
the activations the next stage receives. One setting, ``activations``: this release has no
defence of activations (privacy with pipelines is refused at set-up).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trustworthy_dl.config import Config
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.privacy.inversion.activations import invert_activations
from trustworthy_dl.privacy.inversion.quality import image_quality, save_grid

__all__ = ["run_pipeline_audit"]


def run_pipeline_audit(
    cfg: Config,
    out: Path,
    *,
    images: int,
    rounds: list[int],
    batch_size: int,
    iterations: int | None,
    progress: bool,
) -> dict[str, Any]:
    from trustworthy_dl.engine.setup import build_experiment
    from trustworthy_dl.privacy.inversion.audit import trained_until
    from trustworthy_dl.report.console import RunProgress

    exp = build_experiment(cfg)
    if exp.data.kind != "image":
        raise ConfigError(
            f"activation inversion reconstructs images; {cfg.data.name} is a {exp.data.kind} dataset"
        )
    assert exp.pipeline is not None
    iters = iterations if iterations is not None else 100
    mean, std = float(exp.data.meta.get("mean", 0.0)), float(exp.data.meta.get("std", 1.0))
    box = ((0 - mean) / std, (1 - mean) / std)
    xs = exp.data.x_train[: images * batch_size]
    results: list[dict[str, Any]] = []
    bar = RunProgress(len(rounds) * images, enabled=progress, description="activation audit")
    try:
        for r in rounds:
            stage = (
                exp.pipeline.staged.stages[0]
                if r == 0
                else trained_until(cfg, r, 0.0, out).experiment.pipeline.staged.stages[0]
            )
            psnr, ssim, secs, recons, truths = [], [], [], [], []
            for j in range(images):
                x = xs[j * batch_size : (j + 1) * batch_size]
                with torch.no_grad():
                    act = stage(x)
                t0 = time.perf_counter()
                rec, _ = invert_activations(
                    stage, act, shape_BCHW=tuple(x.shape), box=box, iterations=iters, seed=cfg.seed + j
                )
                secs.append((time.perf_counter() - t0) / batch_size)
                img_r, img_t = rec * std + mean, x * std + mean
                p, s = image_quality(img_r, img_t)
                psnr += p
                ssim += s
                recons.append(img_r)
                truths.append(img_t)
                bar.advance(f"round {r}: PSNR {statistics.fmean(psnr):.1f} dB")
            results.append(
                {
                    "round": r,
                    "setting": "activations",
                    "psnr_db": round(statistics.fmean(psnr), 2),
                    "psnr_db_std": round(statistics.pstdev(psnr), 2),
                    "ssim": round(statistics.fmean(ssim), 4),
                    "label_accuracy": None,
                    "seconds_per_image": round(statistics.fmean(secs), 3),
                    "psnr_db_per_image": [round(v, 2) for v in psnr],
                }
            )
            save_grid(
                torch.cat(truths)[:16],
                {"from activations": torch.cat(recons)[:16]},
                out / f"grid_round{r}.png",
                title=f"stage-1 input of {cfg.model.name} from its activations, round {r}",
            )
    finally:
        bar.close()
    return {
        "attack": "activation_inversion",
        "iterations": iters,
        "images": images,
        "batch_size": batch_size,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "stage_1": str(exp.pipeline.staged.stages[0]).replace("\n", " ")[:300],
        "note": "Stage 2's node inverts stage 1's output activations (labels are not sent: no label accuracy).",
        "privacy": None,
        "results": results,
    }
