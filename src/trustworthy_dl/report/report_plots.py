"""Plots of ``tdl report``: phase times, the attack x defence heatmap, curves and trust per setting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustworthy_dl.report.plots import _pyplot

__all__ = ["plot_curves", "plot_heatmap", "plot_phase_bars", "plot_trust_groups"]

# phases in the order a round runs them; evaluation is reported apart from training
PHASES = (
    "data",
    "compute",
    "attack",
    "gather",
    "security",
    "trust",
    "aggregate",
    "schedule",
    "broadcast",
    "step",
)


def plot_phase_bars(
    splits: Mapping[str, Mapping[str, float]], path: Path, *, per: str = "run"
) -> Path | None:
    """Horizontal stacked bars: seconds per phase (evaluation excluded), one bar per label."""
    labels = [k for k, v in splits.items() if v]
    if not labels:
        return None
    phases = [p for p in PHASES if any(splits[k].get(p) for k in labels)]
    phases += sorted({p for k in labels for p in splits[k]} - set(phases) - {"eval"})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.6))
    left = np.zeros(len(labels))
    cmap = plt.get_cmap("tab20")
    for i, phase in enumerate(phases):
        vals = np.array([float(splits[k].get(phase, 0.0)) for k in labels])
        ax.barh(labels, vals, left=left, color=cmap(i % 20), label=phase)
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds per {per} (evaluation excluded)")
    ax.legend(
        fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(labels) < 4 else -0.12)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
    *,
    metric: str,
    lower_better: bool,
) -> Path:
    """Defence (rows) x attack (columns) heatmap of ``metric``, each cell annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.8, 0.5 * len(rows) + 1.8))
    cmap = "RdYlGn_r" if lower_better else "RdYlGn"
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, title: str, ylabel: str
) -> Path | None:
    """One line per label (e.g. per attack) of a metric against rounds."""
    curves = {k: v for k, v in curves.items() if len(v[0])}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, (x, y) in curves.items():
        ax.plot(x, y, "o-", ms=3, lw=1.2, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trust_groups(
    groups: Mapping[str, dict[str, Any]], path: Path, *, title: str, threshold: float
) -> Path | None:
    """Mean trust of the Byzantine (solid) and honest (dashed) nodes per round, one colour per label."""
    groups = {k: g for k, g in groups.items() if len(g["rounds"])}
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    cmap = plt.get_cmap("tab10")
    for i, (label, g) in enumerate(groups.items()):
        c = cmap(i % 10)
        if g["byzantine"] is not None:
            ax.plot(g["rounds"], g["byzantine"], color=c, lw=1.4, label=f"{label} (byzantine)")
        ax.plot(g["rounds"], g["honest"], color=c, lw=1, ls="--")
    ax.axhline(threshold, color="black", lw=0.8, ls=":")
    ax.set_title(f"{title} (solid: Byzantine mean, dashed: honest mean, dotted: threshold)", fontsize=9)
    ax.set_xlabel("round")
    ax.set_ylabel("trust")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
