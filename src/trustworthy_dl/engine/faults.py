"""Injected faults: which node is out in which round, and what its process does under torchrun.

The ``faults:`` config section lists them (``{kind: crash | silent | straggler, node, round,
rounds, delay_s}``). One schedule serves both backends, so a simulated run and a torchrun run of
the same config lose the same rows:

* ``silent``: the node is alive but sends no row for ``rounds`` rounds (default 1). Under
  torchrun its process reports the row as absent.
* ``straggler``: the node's row is ``delay_s`` late in round ``round``. It is missing iff
  ``distributed.round_timeout_s`` is set and ``delay_s`` exceeds it; then the coordinator goes on
  without it, each later round lasting one timeout while the node still sleeps, so the model
  misses ``ceil(delay_s / timeout) - 1`` rounds (at least one). Under torchrun the process really
  sleeps ``delay_s``, the deadline decides, and the woken rank catches up (it skips the rounds
  whose results already wait: ``star_exchange.py``).
* ``crash``: the node is out from ``round`` for ``rounds`` rounds (None: for the rest of the run).
  Under torchrun its process kills itself (SIGKILL) when it reaches ``round``; torchrun restarts the
  group, the run resumes from its last checkpoint, and the restarted process stays out (reports
  its rows absent) for the rest of the outage, as a machine that has not come back would. The
  k-th crash (by round) fires only in restart attempt k, so a replayed round does not crash again.

What the coordinator does with a missing row (evidence "silent", not Byzantine evidence; the
node's shard moves; it is reinstated when it is back) is the loop's; see ``fault_log.py`` for the
record each fault leaves in ``summary.json``.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustworthy_dl.config import FaultConfig

__all__ = ["FaultSchedule", "LauncherStop", "restart_attempt", "stop_on_sigterm"]


class LauncherStop(Exception):
    """torchrun's agent sent SIGTERM: it is tearing the group down (a rank died)."""


def stop_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`LauncherStop` in this (main) thread, so that the coordinator can
    record the stop before it exits; returns the function that restores the previous handler."""

    def handler(signum: int, frame: object) -> None:
        raise LauncherStop("SIGTERM from the launcher: it stops the group when a rank fails")

    previous = signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def restart_attempt() -> int:
    """How many times torchrun has restarted this worker group (0: the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


@dataclass(frozen=True)
class FaultSchedule:
    """The configured faults, asked per (node, round)."""

    faults: tuple[FaultConfig, ...] = ()
    timeout_s: float | None = None

    def _span(self, f: FaultConfig) -> range:
        if f.kind == "crash":
            return range(f.round, f.round + f.rounds) if f.rounds is not None else range(f.round, 1 << 62)
        if f.kind == "silent":
            return range(f.round, f.round + (f.rounds or 1))
        late = 1
        if self.timeout_s is not None and float(f.delay_s or 0.0) > self.timeout_s:
            late = max(1, math.ceil(float(f.delay_s or 0.0) / self.timeout_s) - 1)
        return range(f.round, f.round + late)

    def fault_at(self, node: int, r: int) -> FaultConfig | None:
        """The fault affecting ``node`` in round ``r`` (the first listed), or None."""
        for f in self.faults:
            if f.node == node and r in self._span(f):
                return f
        return None

    def missing(self, node: int, r: int) -> bool:
        """Whether the model says ``node``'s row is missing in round ``r`` (the simulated backend's answer)."""
        f = self.fault_at(node, r)
        if f is None:
            return False
        if f.kind == "straggler":
            return self.timeout_s is not None and float(f.delay_s or 0.0) > self.timeout_s
        return True

    def reports_absent(self, node: int, r: int) -> bool:
        """Whether ``node``'s own process (torchrun) withholds its row in round ``r``: silent, or
        down after a crash. A straggler is not absent: it sends late and the deadline decides."""
        f = self.fault_at(node, r)
        return f is not None and f.kind != "straggler"

    def act(self, nodes: range, r: int) -> None:
        """Under torchrun, before this process sends round ``r``: crash or sleep as scheduled."""
        crashes = sorted((f for f in self.faults if f.kind == "crash"), key=lambda f: (f.round, f.node))
        for k, f in enumerate(crashes):
            if f.node in nodes and f.round == r and restart_attempt() == k:
                os.kill(os.getpid(), signal.SIGKILL)
        delay = max(
            (
                float(f.delay_s or 0.0)
                for f in self.faults
                if f.kind == "straggler" and f.round == r and f.node in nodes
            ),
            default=0.0,
        )
        if delay > 0:
            time.sleep(delay)

    def cause(self, node: int, r: int) -> str:
        """Why ``node``'s row is missing in round ``r``: the injected fault's kind, or "timeout"."""
        f = self.fault_at(node, r)
        return f.kind if f is not None else "timeout"
