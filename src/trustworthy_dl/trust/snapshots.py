"""Verified snapshots of the parameters and optimizer state, for restoring a migrated stage.

Every ``trust.snapshot_every`` steps the coordinator copies the flat parameters and the
optimizer's per-parameter state, but only if no node had evidence against it since the previous
snapshot (a snapshot taken while an attack is being seen could hold its effect). When a
distrusted stage holder is replaced, the stage's columns (and their optimizer state) are restored
from the newest snapshot taken no later than the first evidence against that holder (the oldest
kept one when the evidence is older than all of them).

Legend: D flat parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Snapshot", "SnapshotStore"]


@dataclass
class Snapshot:
    round: int
    params_D: Tensor
    state: dict[str, Tensor]  # optimizer per-parameter state of (D,) shape (momentum, exp_avg...)


class SnapshotStore:
    """The last few verified snapshots (newest last)."""

    def __init__(self, every: int, *, keep: int = 4) -> None:
        if every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {every}")
        self.every, self.keep = every, keep
        self.snapshots: list[Snapshot] = []
        self._clean_since_last = True

    def observe(self, round_idx: int, evidence: bool, params_D: Tensor, opt: torch.optim.Optimizer) -> bool:
        """Record this step's evidence; take a snapshot after every ``every``-th clean interval."""
        self._clean_since_last &= not evidence
        if (round_idx + 1) % self.every != 0:
            return False
        taken = self._clean_since_last
        if taken:
            state = opt.state.get(opt.param_groups[0]["params"][0], {})
            vecs = {
                k: v.detach().clone()
                for k, v in state.items()
                if isinstance(v, Tensor) and v.shape == params_D.shape
            }
            self.snapshots.append(Snapshot(round_idx, params_D.detach().clone(), vecs))
            self.snapshots = self.snapshots[-self.keep :]
        self._clean_since_last = True
        return taken

    def before(self, round_idx: int) -> Snapshot | None:
        """The newest snapshot taken at or before ``round_idx`` (None if there is none)."""
        found = [s for s in self.snapshots if s.round <= round_idx]
        return found[-1] if found else None

    def for_evidence(self, first_round: int) -> tuple[Snapshot | None, bool]:
        """The snapshot to restore a holder whose first evidence came in ``first_round``: the newest
        one taken before it; when every kept snapshot is newer (evidence long ago, then a late
        quarantine), the oldest kept, the earliest verified state left, rather than none (then the
        flag is True). (None, False) when there is no snapshot at all."""
        snap = self.before(first_round - 1)
        if snap is None and self.snapshots:
            return self.snapshots[0], True
        return snap, False

    @staticmethod
    def restore(snap: Snapshot, cols: slice, params_D: Tensor, opt: torch.optim.Optimizer) -> int:
        """Copy ``snap``'s columns ``cols`` into the parameters and optimizer state; returns bytes moved."""
        moved = 0
        with torch.no_grad():
            params_D[cols] = snap.params_D[cols]
            moved += snap.params_D[cols].numel() * snap.params_D.element_size()
            state = opt.state.get(opt.param_groups[0]["params"][0], {})
            for k, v in snap.state.items():
                if k in state:
                    state[k][cols] = v[cols]
                    moved += v[cols].numel() * v.element_size()
        return moved

    def state_dict(self) -> dict[str, Any]:
        return {
            "snapshots": [{"round": s.round, "params": s.params_D, "state": s.state} for s in self.snapshots],
            "clean": self._clean_since_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = [
            Snapshot(int(s["round"]), s["params"], dict(s["state"])) for s in state["snapshots"]
        ]
        self._clean_since_last = bool(state["clean"])
