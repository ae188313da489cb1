"""Plots of the security layer: trust score per node over rounds, and a node x round timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trustworthy_dl.report.plots import _pyplot

__all__ = ["detection_matrix", "plot_detection_timeline", "plot_trust"]


def plot_trust(
    records: list[dict[str, Any]], out_dir: Path, *, byzantine_ids: list[int], threshold: float
) -> Path | None:
    """trust.png: one line per node (Byzantine red, honest blue) and the quarantine threshold."""
    rows = [r for r in records if "trust" in r]
    if not rows:
        return None
    plt = _pyplot()
    rounds = [r["round"] for r in rows]
    scores = np.array([r["trust"] for r in rows])  # (R, N)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    byz = set(byzantine_ids)
    for node in range(scores.shape[1]):
        bad = node in byz
        ax.plot(
            rounds,
            scores[:, node],
            color="tab:red" if bad else "tab:blue",
            lw=1.2 if bad else 0.8,
            alpha=0.9 if bad else 0.5,
        )
    ax.axhline(threshold, color="black", ls="--", lw=1)
    ax.plot([], [], color="tab:red", label="Byzantine")
    ax.plot([], [], color="tab:blue", label="honest")
    ax.plot([], [], color="black", ls="--", label=f"threshold {threshold}")
    ax.set_xlabel("round")
    ax.set_ylabel("trust score")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = out_dir / "trust.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def detection_matrix(records: list[dict[str, Any]], num_nodes: int) -> np.ndarray:
    """(N, R) codes: 0 clean, 1 evidence against the node that round, 2 quarantined."""
    rows = [r for r in records if "trust" in r]
    out = np.zeros((num_nodes, len(rows)), dtype=np.int8)
    for j, r in enumerate(rows):
        for node in r.get("security", {}).get("positive", []):
            out[node, j] = 1
        for node in r.get("quarantined", []):
            out[node, j] = 2
    return out


def plot_detection_timeline(
    records: list[dict[str, Any]], out_dir: Path, *, byzantine_ids: list[int]
) -> Path | None:
    """detection.png: nodes x rounds; evidence in orange, quarantine in red; Byzantine ids marked."""
    rows = [r for r in records if "trust" in r]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    n = len(rows[0]["trust"])
    mat = detection_matrix(records, n)
    fig, ax = plt.subplots(figsize=(7, 0.25 * n + 1.2))
    ax.imshow(
        mat,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap(["#f2f2f2", "#f5a623", "#d0021b"]),
        vmin=0,
        vmax=2,
        extent=(rows[0]["round"] - 0.5, rows[-1]["round"] + 0.5, n - 0.5, -0.5),
    )
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{i}{' (byz)' if i in set(byzantine_ids) else ''}" for i in range(n)], fontsize=7)
    ax.set_xlabel("round  (orange: evidence that round, red: quarantined)")
    fig.tight_layout()
    path = out_dir / "detection.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
