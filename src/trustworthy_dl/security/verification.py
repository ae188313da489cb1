"""Stage 2 of detection: gradient verification by re-computation on a trusted verifier.

A suspect node's update is re-computed by a trusted verifier from the same batch and the same
parameters, and compared with what the node sent: a mismatch confirms the suspicion (evidence
1), a match clears it. Following BTARD (Gorbunov et al. 2022, "Secure distributed training at
scale"), unflagged nodes are spot-checked too, which catches attackers that stay statistically quiet
(ALIE, IPM). The spot checks have a budget: ``spot_check_fraction`` of the active unflagged
nodes per round in expectation (0.05: 0.8 re-computations per round at N = 16). Nodes whose
stage-1 score is high but below the flag threshold ("suspects", e.g. a label-flipping node early
in training: not an outlier yet, but already among the most suspicious) use the budget first,
the most suspicious first; the rest of it goes to nodes drawn at random, so a quiet attacker is
still checked in about 1 / ``spot_check_fraction`` rounds. Trust is earned: in the first ``warmup_rounds`` rounds every node is
checked (N re-computations per round, once per run), so an attacker that is active from the
start, even a data attack whose updates look honest until the model has learnt something, is
confirmed in round 0. A node that failed a check is watched
(re-checked every round) until it passes ``watch_rounds`` checks in a row. Quarantined nodes are
on probation: re-checked on a backoff schedule, every round at first, the interval doubling
after each failed check up to ``probation_max_interval`` rounds and back to every round after a
passed one. An attacker that keeps failing thus costs a re-computation every 16 rounds instead
of every round (under attack, probation was most of the re-computations), while an honest node
quarantined by mistake is re-checked every round once it passes and earns its way back as fast
as before. Between its checks a quarantined node's trust stands still (the engine does not count
an unseen round as clean), so an attacker cannot wait its way back into the aggregate.

Why a tolerance and not bit-equality: floating-point addition is not associative, and the
verifier may run a different device, kernel or reduction order (cuDNN algorithms, TF32,
atomics), so an honest re-computation differs from the node's in the last bits. The comparison
is a relative L2 error, ``||u - r|| <= atol + rtol * ||r||``: attacks change the update by a
fraction of its norm (ALIE moves every coordinate by about half a standard deviation), orders
of magnitude above the ~1e-6 relative differences of honest float32 re-computation.

The engine supplies ``recompute(node) -> Tensor``, the honest update of that node's batch; for
data attacks (label flipping) it must read the batch from the coordinator's copy of the data,
not from the node. Verification assumes the node's computation is deterministic given (params,
batch): node-side noise (DP) must come from a generator the verifier can replay.

Legend: N nodes, D flat parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation.sharding import reduce_partial, shard_columns

__all__ = ["GradientVerifier", "VerificationResult"]


@dataclass(frozen=True)
class VerificationResult:
    """What one round of verification found.

    Attributes:
        checked: node ids re-computed, in the order given.
        mismatched: nodes whose update differs from the re-computation (or is non-finite).
        cleared: nodes whose update matches the re-computation.
        inconclusive: nodes whose re-computation itself was non-finite (no evidence either way).
        rel_errors: node id -> ||u - r|| / ||r||.
        recomputations: how many updates were re-computed (the extra work).
        seconds: wall-clock time of the re-computations and comparisons.
    """

    checked: list[int] = field(default_factory=list)
    mismatched: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    inconclusive: list[int] = field(default_factory=list)
    rel_errors: dict[int, float] = field(default_factory=dict)
    recomputations: int = 0
    seconds: float = 0.0


class GradientVerifier:
    """Chooses whom to re-compute each round and compares the re-computations.

    Args:
        rtol: relative tolerance of the L2 comparison.
        atol: absolute tolerance of the L2 comparison (for near-zero updates).
        spot_check_fraction: the budget of extra checks: expected fraction of the active,
            unflagged, unwatched nodes re-computed per round (stochastic rounding keeps the
            expectation exact), suspects first, the rest at random.
        seed: derives the per-round spot-check generator when ``select`` is given none.
        watch_rounds: consecutive clean checks a node that failed must pass before it is no
            longer re-checked every round.
        verify_quarantined: re-check quarantined nodes on their probation schedule (False: never).
        suspect_score: unflagged nodes with a stage-1 score at or above this (1.0 = the flag
            threshold) are checked as suspects, within the budget, when ``select`` is given scores.
        max_suspects: at most this many suspects per round, highest scores first (None: the
            whole budget); 0 disables suspect checks.
        warmup_rounds: rounds (from round 0) in which every node is checked.
        probation_max_interval: the longest wait, in rounds, between two checks of a
            quarantined node (1: every round).
    """

    def __init__(
        self,
        *,
        rtol: float = 1e-3,
        atol: float = 1e-8,
        spot_check_fraction: float = 0.05,
        seed: int = 0,
        watch_rounds: int = 5,
        verify_quarantined: bool = True,
        suspect_score: float = 0.5,
        max_suspects: int | None = None,
        warmup_rounds: int = 3,
        probation_max_interval: int = 16,
    ) -> None:
        if not (rtol >= 0 and atol >= 0):
            raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
        if not 0 <= spot_check_fraction <= 1:
            raise ValueError(f"spot_check_fraction must be in [0, 1], got {spot_check_fraction}")
        if watch_rounds < 0:
            raise ValueError(f"watch_rounds must be >= 0, got {watch_rounds}")
        if warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {warmup_rounds}")
        if probation_max_interval < 1:
            raise ValueError(f"probation_max_interval must be >= 1, got {probation_max_interval}")
        if max_suspects is not None and max_suspects < 0:
            raise ValueError(f"max_suspects must be >= 0 or None, got {max_suspects}")
        self.rtol, self.atol = rtol, atol
        self.spot_check_fraction = spot_check_fraction
        self.seed = seed
        self.watch_rounds = watch_rounds
        self.verify_quarantined = verify_quarantined
        self.suspect_score = suspect_score
        self.max_suspects = max_suspects
        self.warmup_rounds = warmup_rounds
        self.probation_max_interval = probation_max_interval
        self._watch: dict[int, int] = {}  # node -> clean checks still needed
        self._probation: dict[int, tuple[int, int]] = {}  # quarantined node -> (next check round, interval)
        self._round = 0
        self.last_selection: dict[int, str] = {}  # node -> why it was selected (for logs)

    @property
    def watched(self) -> list[int]:
        """Nodes re-checked every round because they failed a recent check."""
        return sorted(self._watch)

    def select(
        self,
        flags_N: Tensor,
        active_N: Tensor,
        round_idx: int,
        *,
        scores_N: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Node ids to re-compute this round, ascending.

        Quarantined (``~active_N``) nodes whose probation check is due (when
        ``verify_quarantined``; the others are left alone this round, flagged or not); then all
        flagged and all watched active nodes, every node in a warm-up round, the most suspicious
        remaining nodes by ``scores_N`` (stage 1's scores, optional), and a random
        ``spot_check_fraction`` of the remaining active nodes. The reason for each is kept in
        :attr:`last_selection`.
        """
        flags_N, active_N = flags_N.bool().cpu(), active_N.bool().cpu()
        if flags_N.shape != active_N.shape or flags_N.dim() != 1:
            raise ValueError(
                f"flags_N and active_N must be (N,), got {tuple(flags_N.shape)}, {tuple(active_N.shape)}"
            )
        n = flags_N.numel()
        self._round = round_idx
        reasons: dict[int, str] = {}
        resting: set[int] = set()  # quarantined, not due: not checked this round
        flags, active = flags_N.tolist(), active_N.tolist()  # Python bools: no tensor indexing per node
        for i in range(n):
            if not active[i] and self.verify_quarantined:
                due = round_idx < self.warmup_rounds or self._probation.get(i, (round_idx, 1))[0] <= round_idx
                if due:
                    reasons[i] = "probation"
                else:
                    resting.add(i)
                continue
            if active[i]:
                self._probation.pop(i, None)  # reinstated: a later quarantine starts afresh
            if flags[i]:
                reasons[i] = "flagged"
            elif i in self._watch:
                reasons[i] = "watched"
            elif round_idx < self.warmup_rounds:
                reasons[i] = "warm-up"
        pool = [i for i in range(n) if i not in reasons and active[i]]
        if generator is None:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, round_idx))
        # the round's budget of extra checks: spot_check_fraction of the pool in expectation
        # (stochastic rounding keeps it exact); the most suspicious nodes use it first
        expected = self.spot_check_fraction * len(pool)
        k = math.floor(expected)
        if torch.rand((), generator=generator).item() < expected - k:
            k += 1
        if scores_N is not None and k > 0:
            cap = k if self.max_suspects is None else min(k, self.max_suspects)
            s = scores_N.detach().to(device="cpu", dtype=torch.float64).reshape(-1).tolist()
            ranked = sorted(pool, key=lambda i: (-s[i], i))
            for i in [i for i in ranked if s[i] >= self.suspect_score][:cap]:
                reasons[i] = "suspect"
                k -= 1
            pool = [i for i in pool if i not in reasons]
        for j in torch.randperm(len(pool), generator=generator)[:k].tolist():
            reasons[pool[j]] = "spot-check"
        self.last_selection = dict(sorted(reasons.items()))
        return sorted(reasons)

    def verify(
        self,
        updates_ND: Tensor,
        nodes: Sequence[int],
        recompute: Callable[[int], Tensor],
    ) -> VerificationResult:
        """Re-compute ``nodes`` with ``recompute(node)`` and compare with their rows of ``updates_ND``.

        Updates the watch list: a mismatch (re)starts a node's watch, a clean check counts down.
        """
        t0 = time.perf_counter()
        res: dict[str, Any] = {"mismatched": [], "cleared": [], "inconclusive": [], "rel_errors": {}}
        for node in nodes:
            sent_D = updates_ND[node]
            ref_D = recompute(node).to(device=sent_D.device, dtype=sent_D.dtype).reshape(sent_D.shape)
            if shard_columns() is None:
                ref_norm = float(torch.linalg.vector_norm(ref_D))
                err = float(torch.linalg.vector_norm(sent_D - ref_D))
            else:  # sharded round: each process compares its slice; the squared norms are summed
                sq = torch.stack([ref_D.double().square().sum(), (sent_D - ref_D).double().square().sum()])
                ref_norm, err = (float(v) for v in reduce_partial(sq.cpu()).sqrt())
            if not math.isfinite(ref_norm):
                res["inconclusive"].append(node)
                continue
            res["rel_errors"][node] = err / ref_norm if ref_norm > 0 else (0.0 if err == 0 else math.inf)
            if not err <= self.atol + self.rtol * ref_norm:  # also catches a NaN error
                res["mismatched"].append(node)
                self._watch[node] = self.watch_rounds
                self._reschedule(node, passed=False)
            else:
                self._reschedule(node, passed=True)
                res["cleared"].append(node)
                if node in self._watch:
                    self._watch[node] -= 1
                    if self._watch[node] <= 0:
                        del self._watch[node]
        return VerificationResult(
            checked=list(nodes), recomputations=len(nodes), seconds=time.perf_counter() - t0, **res
        )

    def _reschedule(self, node: int, *, passed: bool) -> None:
        """After a probation check: back to every round if it passed, else wait twice as long."""
        if self.last_selection.get(node) != "probation":
            return
        interval = self._probation.get(node, (0, 0))[1]
        interval = 1 if passed else min(max(2 * interval, 2), self.probation_max_interval)
        self._probation[node] = (self._round + interval, interval)

    def state_dict(self) -> dict[str, Any]:
        return {
            "watch": {str(k): v for k, v in self._watch.items()},
            "probation": {str(k): list(v) for k, v in self._probation.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._watch = {int(k): int(v) for k, v in state["watch"].items()}
        self._probation = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("probation", {}).items()}


def _derive_seed(seed: int, round_idx: int) -> int:
    """A per-round seed from (seed, round): same run, same spot checks, also after a resume."""
    return (seed * 1_000_003 + round_idx * 7_919 + 0x5EED) % (2**63 - 1)
