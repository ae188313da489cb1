"""Pipeline runs: train loss over steps with the attack start, quarantines and migrations marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trustworthy_dl.report.plots import _pyplot

__all__ = ["plot_pipeline_loss"]


def plot_pipeline_loss(
    records: list[dict[str, Any]], out_dir: Path, *, attack_start: int | None
) -> Path | None:
    """pipeline_loss.png: loss per step; dashed red: attack start, orange: quarantine, green: migration."""
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(
        [r["round"] for r in records],
        [r["loss"] for r in records],
        color="tab:blue",
        lw=1,
        label="train loss",
    )
    if attack_start is not None:
        ax.axvline(attack_start, color="tab:red", ls="--", lw=1, label="attack starts")
    quarantines = [r["round"] for r in records if r.get("quarantined_now")]
    migrations = [r["round"] for r in records if r.get("migrations")]
    for i, q in enumerate(quarantines):
        ax.axvline(q, color="tab:orange", lw=1, label="quarantine" if i == 0 else None)
    for i, m in enumerate(migrations):
        ax.axvline(m, color="tab:green", lw=1, ls=":", label="stage migrated" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out_dir / "pipeline_loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
