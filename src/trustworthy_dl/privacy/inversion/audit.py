"""``tdl privacy-audit``: what an eavesdropper on a node's update reconstructs, with and without
the configured privacy defences.

For each requested round r the model is the one the config's run has after r rounds (trained
here, simulated, with the run's own privacy settings, in ``DIR/train_round{r}``; round 0 is the
initial model). Node 0's first ``images x batch_size`` training samples, in batches of
``batch_size``, are then each turned into the update node 0 would send: the plain gradient
(setting ``none``) and, when ``privacy.enabled``, the private update (setting ``privacy``:
clipping, noise with the run's sigma for a batch of ``batch_size``, sparsification). When the
run's batch is larger than the audited one, this is the update of a node whose batch were the
audited one: a run never sends it, but its guarantee (same sigma) is the run's. The chosen attack reconstructs each batch
from the update and the round's parameters. Written to ``DIR``: ``audit.json`` (per setting mean
PSNR, SSIM, label accuracy, seconds per image, and the run's epsilon), ``audit.md`` (the same as a
table) and ``grid_round{r}.png`` (originals above each setting's reconstructions).

For a pipeline or hybrid config the eavesdropper is the node holding stage 2, and what it
attacks is stage 1's output activations (``audit_pipeline.py``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trustworthy_dl.config import Config, config_from_dict
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.privacy.inversion.attacks import ATTACKS, invert
from trustworthy_dl.privacy.inversion.quality import image_quality, label_accuracy, save_grid
from trustworthy_dl.privacy.setup import finite_epsilon

__all__ = ["MAX_BATCH", "run_audit"]

#: The largest batch the attacks are run on: L-BFGS over B images costs B times the memory and
#: far more iterations, and DLG's published successes stop at about 8 images per batch.
MAX_BATCH = 8


def _check(cfg: Config, attack: str, images: int, batch_size: int, rounds: list[int]) -> None:
    if attack not in ATTACKS:
        raise ConfigError(f"--attack {attack!r} is not an inversion attack; valid: {', '.join(ATTACKS)}")
    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ConfigError(
            f"--batch-size {batch_size} is outside the attacks' budget (1..{MAX_BATCH} images per update)"
        )
    if any(r < 0 for r in rounds):
        raise ConfigError(f"--rounds must be >= 0, got {rounds}")


def trained_until(cfg: Config, r: int, sigma: float, out: Path):  # type: ignore[no-untyped-def]
    """The run of ``cfg`` cut after r rounds (simulated, in ``out/train_round{r}``): a RunResult."""
    from trustworthy_dl.engine.run import run_experiment

    d = cfg.to_dict()
    d["training"]["max_rounds"] = r
    d["training"]["eval_every"] = r
    d["privacy"]["target_epsilon"] = None  # the full run's sigma, not one re-planned for r rounds
    d["privacy"]["noise_multiplier"] = sigma
    d["output"].update(dir=str(out / f"train_round{r}"), overwrite=True, plots=False, progress=False)
    return run_experiment(config_from_dict(d))


def _model_at(cfg: Config, r: int, sigma: float, out: Path) -> dict[str, torch.Tensor] | None:
    """The parameters after r rounds of the config's run (None at round 0: the initial model)."""
    if r == 0:
        return None
    res = trained_until(cfg, r, sigma, out)
    return {"params_D": res.experiment.flat.params_D.detach().clone()}


def run_audit(
    cfg: Config,
    out: Path | str,
    *,
    attack: str = "idlg",
    images: int = 16,
    rounds: list[int] | None = None,
    batch_size: int = 1,
    iterations: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the audit; returns what ``audit.json`` holds."""
    from trustworthy_dl.engine.setup import build_experiment
    from trustworthy_dl.report.console import RunProgress

    rounds = [0] if rounds is None else rounds
    _check(cfg, attack, images, batch_size, rounds)
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations must be >= 1, got {iterations}")
    out = Path(out)
    if (out / "audit.json").exists() and not cfg.output.overwrite:
        raise ConfigError(
            f"{str(out)!r} already holds an audit (audit.json); choose another --out or set output.overwrite=true"
        )
    out.mkdir(parents=True, exist_ok=True)
    if cfg.distributed.parallelism != "data":
        from trustworthy_dl.privacy.inversion.audit_pipeline import run_pipeline_audit

        report = run_pipeline_audit(
            cfg,
            out,
            images=images,
            rounds=rounds,
            batch_size=batch_size,
            iterations=iterations,
            progress=progress,
        )
        (out / "audit.json").write_text(json.dumps(report, indent=2))
        (out / "audit.md").write_text(_markdown(report))
        return report
    exp = build_experiment(cfg)
    if max(rounds) > exp.total_rounds:
        raise ConfigError(
            f"--rounds {max(rounds)} is past the run's end: it trains {exp.total_rounds} rounds "
            "(training.max_rounds / num_epochs)"
        )
    if exp.data.kind != "image":
        raise ConfigError(
            f"gradient inversion reconstructs images; {cfg.data.name} is a {exp.data.kind} dataset"
        )
    iters = iterations if iterations is not None else (1000 if attack == "ig" else 100)
    mean, std = float(exp.data.meta.get("mean", 0.0)), float(exp.data.meta.get("std", 1.0))
    box = ((0 - mean) / std, (1 - mean) / std)
    shard = exp.sampler.shards[0]
    if len(shard) < images * batch_size:
        raise ConfigError(f"node 0 holds {len(shard)} samples, fewer than --images x --batch-size")
    priv = exp.privacy
    if priv is not None:  # the update a node sends when its batch is the audited one, at the run's sigma
        priv.mechanism.unit_batch = batch_size
    settings = ["none"] + (["privacy"] if priv is not None else [])
    epsilon = None
    if priv is not None and priv.accountant is not None:
        priv.accountant.step(0, exp.total_rounds)  # what node 0's data has spent by the run's end
        epsilon = priv.accountant.per_shard()[0]
        priv.accountant.steps[0] = 0
    bar = RunProgress(len(rounds) * len(settings) * images, enabled=progress, description="privacy audit")
    results: list[dict[str, Any]] = []
    try:
        for r in rounds:
            trained = _model_at(cfg, r, priv.noise_multiplier if priv is not None else 0.0, out)
            if trained is not None:
                exp.flat.load_flat(trained["params_D"])
            recons: dict[str, list[torch.Tensor]] = {s: [] for s in settings}
            truths = []
            for setting in settings:
                psnr, ssim, acc, secs = [], [], [], []
                for j in range(images):
                    idx = shard[j * batch_size : (j + 1) * batch_size]
                    x, y = exp.data.x_train[idx], exp.data.y_train[idx]
                    if setting == "none":
                        assert exp.computer is not None
                        update = exp.computer.gradient(x, y)[0]
                    else:
                        assert priv is not None
                        update = priv.mechanism.replay(j, r, x, y)
                    t0 = time.perf_counter()
                    rec = invert(
                        attack,
                        exp.flat.model,
                        update,
                        exp.flat.unflatten,
                        shape_BCHW=tuple(x.shape),
                        num_classes=exp.data.num_classes,
                        box=box,
                        iterations=iters,
                        seed=cfg.seed + j,
                    )
                    secs.append((time.perf_counter() - t0) / batch_size)
                    img_r, img_t = rec.x_BCHW * std + mean, x * std + mean
                    p, s = image_quality(img_r, img_t)
                    psnr += p
                    ssim += s
                    acc.append(label_accuracy(rec.labels_B, y))
                    recons[setting].append(img_r)
                    if setting == settings[0]:
                        truths.append(img_t)
                    bar.advance(f"round {r} {setting}: PSNR {statistics.fmean(psnr):.1f} dB")
                results.append(
                    {
                        "round": r,
                        "setting": setting,
                        "psnr_db": round(statistics.fmean(psnr), 2),
                        "psnr_db_std": round(statistics.pstdev(psnr), 2),
                        "ssim": round(statistics.fmean(ssim), 4),
                        "label_accuracy": round(statistics.fmean(acc), 4),
                        "seconds_per_image": round(statistics.fmean(secs), 3),
                        "psnr_db_per_image": [round(v, 2) for v in psnr],
                    }
                )
            save_grid(
                torch.cat(truths)[:16],
                {s: torch.cat(v)[:16] for s, v in recons.items()},
                out / f"grid_round{r}.png",
                title=f"{attack} on {cfg.model.name} / {cfg.data.name}, round {r}",
            )
    finally:
        bar.close()
    report = {
        "attack": attack,
        "iterations": iters,
        "images": images,
        "batch_size": batch_size,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "privacy": _audit_privacy(priv, epsilon) if priv is not None else None,
        "results": results,
    }
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    (out / "audit.md").write_text(_markdown(report))
    return report


def _audit_privacy(priv: Any, epsilon: float | None) -> dict[str, Any]:
    """The run's privacy settings and what node 0's shard has spent by the run's end.

    The audit builds the experiment without training it, so the accountant's own (current)
    epsilons would all be 0: they are left out, and ``epsilon_at_run_end`` is the figure."""
    out = {k: v for k, v in priv.summary().items() if k not in ("epsilon", "epsilon_per_shard")}
    out["epsilon_at_run_end"] = None if epsilon is None else finite_epsilon(epsilon)
    return out


def _markdown(rep: dict[str, Any]) -> str:
    priv = rep["privacy"]
    head = f"# Privacy audit: {rep['attack']} on {rep['model']} / {rep['dataset']}\n\n"
    what = "micro-batches" if rep["attack"] == "activation_inversion" else "updates"
    head += f"{rep['images']} {what} of {rep['batch_size']} image(s) each, {rep['iterations']} iterations.\n"
    if rep.get("note"):
        head += rep["note"] + "\n"
    if priv is not None:
        head += (
            f"Privacy: {priv['mode']}, C = {priv['clip_norm']}, sigma = {priv['noise_multiplier']}, "
            f"epsilon at the run's end = {priv['epsilon_at_run_end']} (delta {priv['delta']}, {priv['accountant']}).\n"
        )
    lines = [
        head,
        "| round | setting | PSNR (dB) | SSIM | label accuracy | s / image |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rep["results"]:
        lines.append(
            f"| {r['round']} | {r['setting']} | {r['psnr_db']:.2f} ± {r['psnr_db_std']:.2f} | {r['ssim']:.3f} | "
            f"{'-' if r['label_accuracy'] is None else format(r['label_accuracy'], '.2f')} | "
            f"{r['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"
