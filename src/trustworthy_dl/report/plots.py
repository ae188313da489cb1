"""PNG plots of a run: loss per round, test accuracy (or perplexity) per evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_training"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(records: list[dict[str, Any]], out_dir: Path, *, language_model: bool) -> list[Path]:
    """Write loss.png and accuracy.png (perplexity.png for language models); returns the paths."""
    plt = _pyplot()
    written: list[Path] = []
    rounds = [r["round"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, [r["loss"] for r in records], lw=1, label="train loss (mean over nodes)")
    ev = [r for r in records if "test_loss" in r]
    if ev:
        ax.plot([r["round"] for r in ev], [r["test_loss"] for r in ev], "o-", ms=3, label="test loss")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "loss.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    if ev:
        key, label, name = (
            ("test_perplexity", "test perplexity", "perplexity.png")
            if language_model
            else ("test_accuracy", "test accuracy", "accuracy.png")
        )
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["round"] for r in ev], [r[key] for r in ev], "o-", ms=3)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        fig.tight_layout()
        written.append(out_dir / name)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
