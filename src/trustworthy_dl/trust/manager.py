"""Per-node trust scores: decay on evidence, recovery when clean, quarantine with hysteresis.

The rule, applied once per round (never per wall-clock second, so runs are reproducible and
the speed of the machine does not change who is trusted), for each node with evidence e in
[0, 1] from the security layer (:class:`~trustworthy_dl.security.verdict.Verdict`):

    e > 0:  score <- score - decay_rate * e
    e = 0:  score <- score + recovery_rate * (1 - score)
    score is clamped to [0, 1] (and rounded to 12 decimals, so 0.9 - 0.1 - 0.1 is 0.7)

A node is quarantined when its score drops below ``threshold`` and reinstated only once it is
back at ``threshold + reinstate_margin`` or above (the margin stops a node at the boundary from
flapping in and out). A quarantined node keeps being scored (probation): its updates are
inspected and verified but excluded from aggregation. With the defaults (0.9, 0.1, 0.05, 0.7),
full evidence takes a node 0.9 -> 0.8 -> 0.7 -> 0.6: quarantined at its third flagged round;
from 0.6, a clean node needs 10 clean rounds to reach 0.75 and be reinstated.

A node whose row is missing (crashed, silent, too late: evidence "silent", which is not evidence of
being Byzantine) is *absent* for that round (:meth:`set_presence`): inactive, so its shard moves,
but its score is kept and it does not count against f; it is active again the round it is back.

Legend: N nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.errors import ConfigError

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["TrustEvents", "TrustManager"]

_DECIMALS = 12


@dataclass(frozen=True)
class TrustEvents:
    """What one trust update changed: nodes newly quarantined and newly reinstated (ascending)."""

    round: int
    quarantined: list[int] = field(default_factory=list)
    reinstated: list[int] = field(default_factory=list)


class TrustManager:
    """Trust scores of N nodes and who is quarantined.

    Args:
        num_nodes: N (None: settings only, bound to a run's nodes by ``DistributedTrainer.train``).
        initial_trust: every node's starting score (>= threshold: nodes start trusted).
        decay_rate: score lost per unit of evidence.
        recovery_rate: fraction of the distance to 1 regained per clean round.
        threshold: scores below it are quarantined.
        reinstate_margin: a quarantined node returns at ``threshold + reinstate_margin``.
        weighted: the aggregation weights each trusted node's row by its score (``weights_N``).
    """

    def __init__(
        self,
        num_nodes: int | None = None,
        *,
        initial_trust: float = 0.9,
        decay_rate: float = 0.1,
        recovery_rate: float = 0.05,
        threshold: float = 0.7,
        reinstate_margin: float = 0.05,
        weighted: bool = False,
    ) -> None:
        if num_nodes is not None and num_nodes < 1:
            raise ConfigError(f"num_nodes must be >= 1, got {num_nodes}")
        for name, v in (
            ("initial_trust", initial_trust),
            ("decay_rate", decay_rate),
            ("recovery_rate", recovery_rate),
            ("threshold", threshold),
            ("reinstate_margin", reinstate_margin),
        ):
            if not 0 <= v <= 1:
                raise ConfigError(f"trust {name} must be in [0, 1], got {v}")
        if threshold + reinstate_margin > 1:
            raise ConfigError(
                f"threshold + reinstate_margin = {threshold} + {reinstate_margin} > 1: "
                "a quarantined node could never be reinstated"
            )
        if initial_trust < threshold:
            raise ConfigError(
                f"initial_trust={initial_trust} is below threshold={threshold}: every node would start quarantined"
            )
        self.initial_trust = initial_trust
        self.decay_rate = decay_rate
        self.recovery_rate = recovery_rate
        self.threshold = threshold
        self.reinstate_margin = reinstate_margin
        self.weighted = weighted  # aggregation weights each trusted row by its score
        self.bind(num_nodes or 0)

    def bind(self, num_nodes: int) -> None:
        """(Re)start with ``num_nodes`` nodes at ``initial_trust``. A manager made without
        ``num_nodes`` (the seed API's ``TrustManager(initial_trust=...)``) holds its settings only,
        for ``DistributedTrainer.train(trust_manager=...)``, which binds it to the run's nodes."""
        self.num_nodes = num_nodes
        self._scores_N = torch.full((num_nodes,), float(self.initial_trust), dtype=torch.float64)
        self._quarantined_N = torch.zeros(num_nodes, dtype=torch.bool)
        self._quarantine_rounds_N = torch.zeros(num_nodes, dtype=torch.int64)
        self._absent_N = torch.zeros(num_nodes, dtype=torch.bool)
        self.round = 0

    @classmethod
    def from_config(cls, num_nodes: int, cfg: Config) -> TrustManager:
        """Build from ``cfg.trust`` and ``cfg.security.trust_threshold``."""
        t = cfg.trust
        return cls(
            num_nodes,
            initial_trust=t.initial_trust,
            decay_rate=t.decay_rate,
            recovery_rate=t.recovery_rate,
            threshold=cfg.security.trust_threshold,
            reinstate_margin=t.reinstate_margin,
            weighted=t.weighted_aggregation,
        )

    @property
    def scores(self) -> Tensor:
        """Current scores, float64 (N,) (a copy)."""
        return self._scores_N.clone()

    @property
    def quarantined_N(self) -> Tensor:
        """bool (N,): excluded from aggregation (a copy)."""
        return self._quarantined_N.clone()

    @property
    def active_N(self) -> Tensor:
        """bool (N,): trusted and present: not quarantined, not absent."""
        return ~self._quarantined_N & ~self._absent_N

    @property
    def absent_N(self) -> Tensor:
        """bool (N,): nodes whose row was missing in the last round (a copy)."""
        return self._absent_N.clone()

    def set_presence(self, present_N: Tensor) -> tuple[list[int], list[int]]:
        """Record who sent a row this round; returns (nodes newly absent, nodes back)."""
        absent = ~present_N.reshape(-1).bool().cpu()
        if absent.numel() != self.num_nodes:
            raise ValueError(f"presence has {absent.numel()} entries, expected {self.num_nodes}")
        gone = (absent & ~self._absent_N).nonzero().flatten().tolist()
        back = (~absent & self._absent_N).nonzero().flatten().tolist()
        self._absent_N = absent
        return gone, back

    @property
    def quarantine_rounds_N(self) -> Tensor:
        """int64 (N,): rounds each node has ended in quarantine so far."""
        return self._quarantine_rounds_N.clone()

    def update(self, evidence_N: Tensor, observed_N: Tensor | None = None) -> TrustEvents:
        """Apply one round of evidence (float in [0, 1], (N,)); returns who changed status.

        ``observed_N`` (bool, optional): nodes whose work was seen this round. An unobserved node
        (a pipeline spare, or a quarantined node left with no stage) keeps its score: trust is
        neither lost nor regained without evidence.
        """
        e = torch.as_tensor(evidence_N).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if e.numel() != self.num_nodes:
            raise ValueError(f"evidence has {e.numel()} entries, expected {self.num_nodes}")
        if not bool(((e >= 0) & (e <= 1)).all()):  # NaN fails too
            raise ValueError(f"evidence must be in [0, 1], got {e.tolist()}")
        s = self._scores_N
        s = torch.where(e > 0, s - self.decay_rate * e, s + self.recovery_rate * (1 - s))
        s = torch.round(s.clamp(0.0, 1.0), decimals=_DECIMALS)
        if observed_N is not None:
            s = torch.where(observed_N.reshape(-1).bool().cpu(), s, self._scores_N)
        newly_q = ~self._quarantined_N & (s < self.threshold)
        back = self._quarantined_N & (s >= round(self.threshold + self.reinstate_margin, _DECIMALS))
        self._quarantined_N = (self._quarantined_N | newly_q) & ~back
        self._scores_N = s
        self._quarantine_rounds_N += self._quarantined_N.long()
        events = TrustEvents(
            self.round, newly_q.nonzero().flatten().tolist(), back.nonzero().flatten().tolist()
        )
        self.round += 1
        return events

    def weights_N(self) -> Tensor:
        """Trust-weighted aggregation weights: active nodes' scores normalised to sum 1.

        Quarantined and absent nodes get 0. If no node is active (or all active scores are 0) every weight
        is 0: the caller must skip the step rather than divide by zero.
        """
        w = torch.where(
            self._quarantined_N | self._absent_N, torch.zeros_like(self._scores_N), self._scores_N
        )
        total = w.sum()
        return w / total if total > 0 else w

    def summary(self) -> dict[str, Any]:
        """The ``trust`` section of summary.json."""
        return {
            "final_scores": [round(v, 6) for v in self._scores_N.tolist()],
            "quarantined": self._quarantined_N.nonzero().flatten().tolist(),
            "quarantine_rounds": self._quarantine_rounds_N.tolist(),
            "rounds": self.round,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": self._scores_N.clone(),
            "quarantined": self._quarantined_N.clone(),
            "quarantine_rounds": self._quarantine_rounds_N.clone(),
            "absent": self._absent_N.clone(),
            "round": self.round,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = torch.as_tensor(state["scores"], dtype=torch.float64)
        if scores.shape != (self.num_nodes,):
            raise ValueError(f"state has {scores.numel()} scores, expected {self.num_nodes}")
        self._scores_N = scores.clone()
        self._quarantined_N = torch.as_tensor(state["quarantined"], dtype=torch.bool).clone()
        self._quarantine_rounds_N = torch.as_tensor(state["quarantine_rounds"], dtype=torch.int64).clone()
        self._absent_N = torch.as_tensor(
            state.get("absent", torch.zeros(self.num_nodes, dtype=torch.bool)), dtype=torch.bool
        ).clone()
        self.round = int(state["round"])
