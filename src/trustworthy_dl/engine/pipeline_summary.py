"""A pipeline or hybrid run's summary sections: layout, verification cost, migrations, recovery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustworthy_dl.engine.pipeline_loop import PipelineLoop

__all__ = ["pipeline_summary"]


def pipeline_summary(loop: PipelineLoop, summary: dict[str, Any]) -> dict[str, Any]:
    """The data-parallel summary plus the pipeline, verification, migration and recovery sections."""
    pp = loop.pp
    summary["byzantine_ids"] = loop.byzantine_ids
    summary["pipeline"] = {
        "parallelism": loop.exp.cfg.distributed.parallelism,
        "replicas": pp.replicas,
        "stages": pp.num_stages,
        "spares": pp.spares,
        "micro_batches": pp.micro_batches,
        "schedule": pp.schedule,
        "schedule_ticks": pp.schedule_stats.ticks,
        "peak_stashed_micro_batches": pp.schedule_stats.peak_stash,
        "stage_params": pp.staged.stage_sizes(),
        "tied": [t.name for t in pp.staged.ties],
        "notes": pp.notes,
    }
    rounds = max(loop.tracker.rounds, 1)  # every step the run took, a resumed run's included
    verify_s = loop.tracker.verify_seconds
    summary["verification"] = {
        "recomputed_per_step": round(loop.verify_checked / rounds, 3),
        "seconds": round(verify_s, 4),
        "share_of_step_time": round(verify_s / loop.step_seconds, 4) if loop.step_seconds > 0 else None,
        "note": "re-run stage micro-batches (cross-validation) and re-computed stage rows (hybrid groups)",
    }
    ev = loop.migrations
    summary["migrations"] = {
        "count": len(ev),
        "mean_seconds": round(sum(e["seconds"] for e in ev) / len(ev), 6) if ev else None,
        "bytes": sum(e["bytes"] for e in ev),
        "events": ev,
    }
    summary["recovery_steps"] = _recovery_steps(loop)
    summary["detection"] = loop.tracker.summary()
    summary["trust"] = loop.exp.trust.summary()
    return summary


def _recovery_steps(loop: PipelineLoop, window: int = 5) -> int | None:
    """Steps from the last migration until the train loss (mean of ``window`` steps) is back at
    its level over the ``window`` steps before the attack started; None if no migration, or
    if it never got back."""
    start = loop.tracker.attack_start
    if not loop.migrations or start is None or start < window:
        return None
    losses = [rec["loss"] for rec in loop.log.records]
    before = sum(losses[start - window : start]) / window
    first = max(e["round"] for e in loop.migrations) + 1  # the migration step's loss came before it
    for r in range(first + window, len(losses) + 1):
        if sum(losses[r - window : r]) / window <= before:
            return r - window - first
    return None
