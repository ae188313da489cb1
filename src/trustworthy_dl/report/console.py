"""Terminal output: a progress bar while training and a table of headline figures at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["RunProgress", "print_summary", "summary_rows"]


class _RateColumn(ProgressColumn):
    """Items per second (rounds/s, runs/s) over the bar's recent history."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:.2f} {self.unit}/s", style="cyan")


class RunProgress:
    """A rich progress bar over rounds showing the latest loss (silent when disabled)."""

    def __init__(
        self, total_rounds: int, *, enabled: bool, description: str = "training", unit: str = "rounds"
    ) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(unit),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total_rounds, status="")
            self._progress.start()

    def advance(self, status: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The headline figures of a run's summary.json as (name, value) pairs."""
    final = summary.get("final", {})
    rows: list[tuple[str, Any]] = [
        ("backend", summary.get("backend")),
        ("nodes (byzantine)", f"{summary.get('num_nodes')} ({summary.get('num_byzantine', 0)})"),
        ("attack / aggregator", f"{summary.get('attack')} / {summary.get('aggregator')}"),
        ("rounds", summary.get("rounds")),
        ("test accuracy", final.get("test_accuracy")),
        ("test loss", final.get("test_loss")),
    ]
    if final.get("perplexity") is not None:
        rows.append(("perplexity", final.get("perplexity")))
    if final.get("backdoor_success") is not None:
        rows.append(("backdoor success rate", final.get("backdoor_success")))
    det = summary.get("detection")
    if det:
        rows += [
            ("detection TPR", det.get("tpr")),
            ("detection FPR", det.get("fpr")),
            ("latency (median rounds)", det.get("latency_rounds_median")),
        ]
    pipe = summary.get("pipeline")
    if pipe:
        mig = summary.get("migrations", {})
        share = summary.get("verification", {}).get("share_of_step_time")
        rows += [
            (
                "layout",
                f"{pipe['replicas']} x {pipe['stages']} stages + {pipe['spares']} spare(s), {pipe['schedule']}",
            ),
            ("stage migrations", mig.get("count")),
            ("verification / step time", None if share is None else f"{100 * share:.1f}%"),
        ]
    priv = summary.get("privacy")
    if priv:
        rows.append(
            (
                f"privacy ({priv['mode']}, {priv['accountant'] or 'no accountant'})",
                f"epsilon {priv['epsilon']} at delta {priv['delta']:g}, sigma {priv['noise_multiplier']:g}",
            )
        )
    thr = summary.get("throughput", {})
    rows += [
        ("wall time (s)", summary.get("wall_s")),
        ("throughput (samples/s)", thr.get("samples_per_s")),
        ("peak memory (MB)", summary.get("peak_memory_mb")),
        ("output", summary.get("run", {}).get("dir")),
    ]
    return rows


def print_summary(summary: dict[str, Any], *, console: Console | None = None) -> None:
    """Print the headline figures of a run's summary.json as a table."""
    console = console or Console()
    table = Table(title=f"trustworthy-dl run: {summary.get('run', {}).get('name', '')}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = summary_rows(summary)
    for k, v in rows:
        table.add_row(k, fmt_value(v))
    console.print(table)
