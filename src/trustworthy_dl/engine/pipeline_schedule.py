"""Micro-batch schedules of a pipeline: GPipe and 1F1B, as per-stage action lists and ticks.

Each stage runs its own ordered list of actions ``("F", k)`` (forward of micro-batch k) and
``("B", k)`` (its backward):

* **GPipe** (Huang et al. 2019): every forward, then every backward. A stage stashes the
  activations of all m micro-batches.
* **1F1B** (PipeDream-Flush, Narayanan et al. 2021): stage s runs ``S - s - 1`` warm-up forwards,
  then alternates one forward and one backward, then drains the backwards. It stashes at most
  ``S - s`` micro-batches, and has the same bubble as GPipe.

Both run each stage's backwards in micro-batch order 0..m-1, so a stage accumulates its gradient
in the same order under either schedule: the two give bit-identical gradients.

:func:`ticks` interleaves the stages' lists the way parallel stages would run them: at each tick
every stage runs its next action if what it needs has arrived (the previous stage's forward of
that micro-batch, or the next stage's backward). The simulated backend executes actions in that
order; the tick count is the schedule's length in stage-steps (the bubble shows in it).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustworthy_dl.errors import ConfigError

__all__ = ["Action", "ScheduleStats", "stage_actions", "ticks"]

Action = tuple[str, int]  # ("F" | "B", micro-batch)


@dataclass(frozen=True)
class ScheduleStats:
    """Length of a schedule in ticks, and the most micro-batches any stage held stashed at once."""

    ticks: int
    peak_stash: int


def stage_actions(schedule: str, num_stages: int, micro_batches: int, stage: int) -> list[Action]:
    """The ordered actions of ``stage`` under ``schedule`` (``gpipe`` or ``1f1b``)."""
    m = micro_batches
    if schedule == "gpipe":
        return [("F", k) for k in range(m)] + [("B", k) for k in range(m)]
    if schedule == "1f1b":
        warm = min(num_stages - stage - 1, m)
        out: list[Action] = [("F", k) for k in range(warm)]
        for i in range(m - warm):
            out += [("F", warm + i), ("B", i)]
        out += [("B", k) for k in range(m - warm, m)]
        return out
    raise ConfigError(f"distributed.schedule must be gpipe or 1f1b, got {schedule!r}")


def ticks(
    schedule: str, num_stages: int, micro_batches: int
) -> tuple[list[list[tuple[int, Action]]], ScheduleStats]:
    """The actions grouped by tick, each ``(stage, action)``; and the schedule's statistics."""
    lists = [stage_actions(schedule, num_stages, micro_batches, s) for s in range(num_stages)]
    pos = [0] * num_stages
    done: set[tuple[int, str, int]] = set()
    stash = [0] * num_stages
    peak = 0
    out: list[list[tuple[int, Action]]] = []
    while any(p < len(lst) for p, lst in zip(pos, lists)):
        tick: list[tuple[int, Action]] = []
        for s, lst in enumerate(lists):
            if pos[s] == len(lst):
                continue
            kind, k = lst[pos[s]]
            if kind == "F":
                ready = s == 0 or (s - 1, "F", k) in done
            else:
                ready = (s, "F", k) in done and (s == num_stages - 1 or (s + 1, "B", k) in done)
            if ready:
                tick.append((s, (kind, k)))
        if not tick:  # cannot happen for gpipe / 1f1b; guards a bad custom list
            raise RuntimeError(f"schedule {schedule!r} deadlocks at positions {pos}")
        for s, (kind, k) in tick:
            done.add((s, kind, k))
            pos[s] += 1
            stash[s] += 1 if kind == "F" else -1
        peak = max(peak, *stash)
        out.append(tick)
    return out, ScheduleStats(ticks=len(out), peak_stash=peak)
