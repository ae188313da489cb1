"""Cross-validation of pipeline stages: a verifier re-runs sampled micro-batches of each stage.

For every (replica, stage) unit a fraction ``rate`` of its micro-batches is drawn each step
(stochastic rounding keeps the expectation exact). The verifier (a trusted node holding the same
stage in another replica, which has the same parameters after each synchronisation, or the
coordinator's verified copy when there is one replica) re-runs the stage on exactly the input the
holder received and compares what the holder sent: its output activations, and on the way back its
activation-gradient, each to a relative L2 tolerance. A mismatch is evidence (1.0) against the
holder; its other units are then re-checked every step until it passes ``watch_rounds`` checks.
Blame lands on the stage that broke the chain: a stage fed tampered activations computes honestly
on what it received and is cleared.

Cost: a checked micro-batch is one stage's forward and, past stage 0, the backward to its input
only (the parameter gradient is not needed to check messages): at most 1 / (S x m) of a replica's
step, so the expected overhead is below ``rate`` of the step's compute.

Legend: M replicas, S stages, m micro-batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.attacks.attacker import derive_seed
from trustworthy_dl.engine.pipeline_exec import Hop, ReplicaPass, StageRunner

__all__ = ["PipelineCheck", "PipelineVerifier"]


@dataclass
class PipelineCheck:
    """One step's cross-validation: failed units (replica, stage) -> why; checks made; seconds."""

    failed: dict[tuple[int, int], str] = field(default_factory=dict)
    checked: int = 0
    seconds: float = 0.0


def _mismatch(sent: Tensor | None, ref: Tensor, rtol: float, atol: float) -> float | None:
    """The relative error of ``sent`` against ``ref`` if it is out of tolerance, else None."""
    if sent is None or sent.shape != ref.shape:
        return math.inf
    if not bool(torch.isfinite(ref).all()):  # an honest re-run is non-finite too (its input was): it
        # passes if it sent the same thing (the stage whose output made it so is judged on its own)
        same = torch.allclose(sent.double(), ref.double(), rtol=rtol, atol=atol, equal_nan=True)
        return None if same else math.inf
    err = float(torch.linalg.vector_norm((sent - ref).double()))
    norm = float(torch.linalg.vector_norm(ref.double()))
    if err <= atol + rtol * norm:  # a NaN error fails this test
        return None
    return err / norm if norm > 0 else math.inf


class PipelineVerifier:
    """Samples micro-batches of every stage unit and re-runs them (see the module docstring)."""

    def __init__(
        self, *, rate: float, rtol: float = 1e-3, atol: float = 1e-8, seed: int = 0, watch_rounds: int = 5
    ) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"pipeline_verify_rate must be in [0, 1], got {rate}")
        self.rate, self.rtol, self.atol, self.seed, self.watch_rounds = rate, rtol, atol, seed, watch_rounds
        self._watch: dict[int, int] = {}  # node -> clean checks still needed
        self.checked_total = 0
        self.seconds_total = 0.0

    def _sample(self, m: int, gen: torch.Generator, watched: bool) -> list[int]:
        expected = self.rate * m
        k = math.floor(expected)
        if torch.rand((), generator=gen).item() < expected - k:
            k += 1
        if watched:
            k = max(k, 1)
        return sorted(torch.randperm(m, generator=gen)[:k].tolist())

    def plan(
        self, replicas: int, stages: int, micro: int, holder: list[int], round_idx: int
    ) -> list[tuple[int, int, int]]:
        """The (replica, stage, micro-batch) triples to re-run this step, unit by unit.

        Decided by the coordinator from (seed, round) and its watch list; under torchrun it is sent
        to the stage holders, which then report the sampled messages (see ``pipeline_checks.py``).
        """
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "pipeline-verify", round_idx))
        return [
            (m, s, k)
            for m in range(replicas)
            for s in range(stages)
            for k in self._sample(micro, gen, holder[m * stages + s] in self._watch)
        ]

    def check(
        self, runner: StageRunner, passes: list[ReplicaPass], holder: list[int], round_idx: int
    ) -> PipelineCheck:
        """Re-run sampled micro-batches of every unit; ``holder[m * S + s]`` is the unit's node."""
        micro = len(passes[0].hops[0]) if passes else 0
        samples = self.plan(len(passes), runner.num_stages, micro, holder, round_idx)
        return self.judge(runner, {(m, s, k): passes[m].hops[s][k] for m, s, k in samples}, holder)

    def judge(
        self, runner: StageRunner, hops: dict[tuple[int, int, int], Hop], holder: list[int]
    ) -> PipelineCheck:
        """Re-run each sampled hop (in :meth:`plan`'s order) and compare what was sent; a unit's first
        mismatch is evidence against its holder and ends that unit's checks."""
        t0 = time.perf_counter()
        S = runner.num_stages
        out = PipelineCheck()
        failed_nodes: set[int] = set()
        passed_nodes: set[int] = set()
        for (m, s, k), hop in hops.items():
            if (m, s) in out.failed:
                continue
            node = holder[m * S + s]
            y_ref, g_ref = runner.recompute_messages(s, hop)
            out.checked += 1
            why = None
            err = _mismatch(hop.y_out, y_ref, self.rtol, self.atol)
            if err is not None:
                why = f"output of micro-batch {k} differs (relative error {err:.3g})"
            elif s > 0 and g_ref is not None:
                err = _mismatch(hop.g_out, g_ref, self.rtol, self.atol)
                if err is not None:
                    why = f"activation-gradient of micro-batch {k} differs (relative error {err:.3g})"
            if why is not None:
                out.failed[(m, s)] = why
                failed_nodes.add(node)
                continue
            passed_nodes.add(node)
        for node in failed_nodes:
            self._watch[node] = self.watch_rounds
        for node in passed_nodes - failed_nodes:
            if node in self._watch:
                self._watch[node] -= 1
                if self._watch[node] <= 0:
                    del self._watch[node]
        out.seconds = time.perf_counter() - t0
        self.checked_total += out.checked
        self.seconds_total += out.seconds
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "watch": {str(k): v for k, v in self._watch.items()},
            "checked": self.checked_total,
            "seconds": self.seconds_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._watch = {int(k): int(v) for k, v in state["watch"].items()}
        self.checked_total = int(state["checked"])
        self.seconds_total = float(state["seconds"])
