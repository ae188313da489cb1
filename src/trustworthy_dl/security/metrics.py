"""Detection metrics over a run: the simulation knows who is Byzantine, so it can score itself.

Counts are over node-rounds, in two flavours:

- quarantine (the headline ``tp``/``fp``/``tn``/``fn``, ``tpr``, ``fpr``, ``precision``): a
  node-round is predicted positive when the node is quarantined after that round's trust
  update, i.e. excluded from that round's aggregate; it is actually positive when the node is
  Byzantine and its attack has started (the first round ``attack_active`` was true, at or
  before this round). This is what the defence does to training, and it agrees with latency.
- flag (``flag_*``): predicted positive when the round's verdict counts against the node
  (evidence > 0); actually positive when the node is Byzantine and attacking in this very
  round (an intermittent attacker is honest in its quiet rounds). Optional ``stage1_*`` score
  stage 1's raw flags the same way, before verification clears or confirms them.

Detection latency of a Byzantine node: rounds from its attack start to its first quarantine
(``q - s``; 0 = quarantined in the round it started). Nodes never quarantined after their
attack started are counted in ``undetected``; the median and max are over the caught ones.
A rate whose denominator is empty (TPR with no Byzantine node) is None, never a made-up number.

Legend: N nodes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["DetectionTracker", "confusion_rates"]


def confusion_rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | None]:
    """TPR, FPR and precision; None where the denominator is zero."""

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"tpr": ratio(tp, tp + fn), "fpr": ratio(fp, fp + tn), "precision": ratio(tp, tp + fp)}


class DetectionTracker:
    """Accumulates detection outcomes round by round and summarises them.

    Args:
        num_nodes: N.
        byzantine_ids: the Byzantine nodes (empty for a clean run).
        attack_active: round -> whether the Byzantine nodes attack in that round; None means
            from round 0 on, every round.
    """

    def __init__(
        self,
        num_nodes: int,
        byzantine_ids: Iterable[int],
        *,
        attack_active: Callable[[int], bool] | None = None,
    ) -> None:
        self.num_nodes = num_nodes
        self.byzantine = sorted(set(int(i) for i in byzantine_ids))
        bad = [i for i in self.byzantine if not 0 <= i < num_nodes]
        if bad:
            raise ValueError(f"byzantine_ids {bad} out of range for num_nodes={num_nodes}")
        self._byz_N = torch.zeros(num_nodes, dtype=torch.bool)
        self._byz_N[self.byzantine] = True
        self.attack_active = attack_active if attack_active is not None else (lambda r: True)
        self.attack_start: int | None = None
        self.rounds = 0
        self.counts: dict[str, dict[str, int]] = {
            k: dict.fromkeys(("tp", "fp", "tn", "fn"), 0) for k in ("q", "flag", "stage1")
        }
        self.first_quarantine: dict[int, int] = {}
        self.ever_quarantined: set[int] = set()
        self.quarantine_entries = dict.fromkeys(range(num_nodes), 0)
        self._prev_q_N = torch.zeros(num_nodes, dtype=torch.bool)
        self.recomputations = 0
        self.verify_seconds = 0.0
        self._stage1_seen = False

    def record(
        self,
        round_idx: int,
        *,
        flags_N: Tensor,
        quarantined_N: Tensor,
        stage1_flags_N: Tensor | None = None,
        recomputations: int = 0,
        verify_seconds: float = 0.0,
    ) -> None:
        """Record one round, after the trust update (rounds in increasing order).

        Args:
            flags_N: bool, the verdict's positives (``Verdict.positive_N``).
            quarantined_N: bool, quarantined after this round's trust update.
            stage1_flags_N: bool, stage 1's raw flags (optional).
            recomputations, verify_seconds: this round's verification cost.
        """
        active = bool(self.attack_active(round_idx))
        if active and self.attack_start is None:
            self.attack_start = round_idx
        started = self.attack_start is not None
        q_N = quarantined_N.bool().cpu()
        self._count("q", q_N, self._byz_N & started)
        self._count("flag", flags_N.bool().cpu(), self._byz_N & active)
        if stage1_flags_N is not None:
            self._stage1_seen = True
            self._count("stage1", stage1_flags_N.bool().cpu(), self._byz_N & active)
        for i in q_N.nonzero().flatten().tolist():
            self.ever_quarantined.add(i)
            if not self._prev_q_N[i]:
                self.quarantine_entries[i] += 1
            if self._byz_N[i] and started and i not in self.first_quarantine:
                self.first_quarantine[i] = round_idx
        self._prev_q_N = q_N
        self.rounds += 1
        self.recomputations += int(recomputations)
        self.verify_seconds += float(verify_seconds)

    def _count(self, kind: str, pred_N: Tensor, truth_N: Tensor) -> None:
        c = self.counts[kind]
        c["tp"] += int((pred_N & truth_N).sum())
        c["fp"] += int((pred_N & ~truth_N).sum())
        c["tn"] += int((~pred_N & ~truth_N).sum())
        c["fn"] += int((~pred_N & truth_N).sum())

    def latencies(self) -> dict[int, int | None]:
        """Byzantine node -> rounds from attack start to first quarantine (None: never caught)."""
        s = self.attack_start
        return {
            i: (self.first_quarantine[i] - s if s is not None and i in self.first_quarantine else None)
            for i in self.byzantine
        }

    def summary(self) -> dict[str, Any]:
        """The ``detection`` section of summary.json (see the module docstring for definitions)."""
        q = self.counts["q"]
        out: dict[str, Any] = {**q, **confusion_rates(**q)}
        lat = self.latencies()
        caught = [v for v in lat.values() if v is not None]
        out["latency_rounds_median"] = statistics.median(caught) if caught else None
        out["latency_rounds_max"] = max(caught) if caught else None
        out["latency_rounds"] = {str(k): v for k, v in lat.items()}
        out["detected"] = len(caught)
        out["undetected"] = len(lat) - len(caught) if self.attack_start is not None else 0
        honest_q = sorted(i for i in self.ever_quarantined if not self._byz_N[i])
        out["false_quarantines"] = len(honest_q)
        out["false_quarantine_nodes"] = honest_q
        out["false_quarantine_events"] = sum(self.quarantine_entries[i] for i in honest_q)
        for kind in ("flag", "stage1") if self._stage1_seen else ("flag",):
            c = self.counts[kind]
            out.update({f"{kind}_{k}": v for k, v in c.items()})
            out.update({f"{kind}_{k}": v for k, v in confusion_rates(**c).items()})
        out["attack_start"] = self.attack_start
        out["rounds"] = self.rounds
        out["verification"] = {
            "recomputations": self.recomputations,
            "recomputations_per_round": self.recomputations / self.rounds if self.rounds else 0.0,
            "seconds": self.verify_seconds,
            "seconds_per_round": self.verify_seconds / self.rounds if self.rounds else 0.0,
        }
        out["definition"] = "tp/fp/tn/fn over node-rounds; positive = quarantined (flag_*: evidence > 0)"
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "attack_start": self.attack_start,
            "rounds": self.rounds,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "first_quarantine": {str(k): v for k, v in self.first_quarantine.items()},
            "ever_quarantined": sorted(self.ever_quarantined),
            "quarantine_entries": {str(k): v for k, v in self.quarantine_entries.items()},
            "prev_quarantined": self._prev_q_N.nonzero().flatten().tolist(),
            "recomputations": self.recomputations,
            "verify_seconds": self.verify_seconds,
            "stage1_seen": self._stage1_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attack_start = state["attack_start"]
        self.rounds = int(state["rounds"])
        self.counts = {k: {kk: int(vv) for kk, vv in v.items()} for k, v in state["counts"].items()}
        self.first_quarantine = {int(k): int(v) for k, v in state["first_quarantine"].items()}
        self.ever_quarantined = set(state["ever_quarantined"])
        self.quarantine_entries = {int(k): int(v) for k, v in state["quarantine_entries"].items()}
        self._prev_q_N = torch.zeros(self.num_nodes, dtype=torch.bool)
        self._prev_q_N[list(state["prev_quarantined"])] = True
        self.recomputations = int(state["recomputations"])
        self.verify_seconds = float(state["verify_seconds"])
        self._stage1_seen = bool(state["stage1_seen"])
