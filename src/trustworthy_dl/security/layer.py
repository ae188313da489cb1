"""The security seam of the round loop: stage 1 statistics, stage 2 re-computation, one verdict.

``SecurityLayer.inspect`` runs every round on the coordinator::

    s1    = detector.inspect(updates_ND)                    # MANDERA ranks + distance scores
    nodes = verifier.select(s1.flags_N, active_N, round)    # suspects, probation, spot checks
    v     = verifier.verify(updates_ND, nodes, recompute)   # a trusted node re-computes their work
    verdict = make_verdict(N, stage1=s1, verification=v, tampered=...)

``recompute(node)`` is supplied by the loop: the same shard batch and the same parameters run on
a trusted verifier, so a node that sent anything other than its honest gradient is caught even
when it hides inside the statistics (BTARD's validators, Gorbunov et al. 2022).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.data.sampler import derive_seed
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.security.detector import Stage1Detector
from trustworthy_dl.security.verdict import Verdict, make_verdict
from trustworthy_dl.security.verification import GradientVerifier

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["SecurityLayer", "build_security"]


class SecurityLayer:
    """Stage 1 (optional) and stage 2 (optional) combined into a per-round :class:`Verdict`."""

    def __init__(
        self,
        num_nodes: int,
        *,
        detector: Stage1Detector | None,
        verifier: GradientVerifier | None,
        seed: int = 0,
    ) -> None:
        if detector is None and verifier is None:
            raise ValueError("SecurityLayer needs a detector, a verifier or both")
        self.num_nodes, self.detector, self.verifier, self.seed = num_nodes, detector, verifier, seed
        self.rounds = 0
        self.recomputations = 0
        self.verify_seconds = 0.0
        self.detect_seconds = 0.0

    def inspect(
        self,
        updates_ND: Tensor,
        *,
        round: int,
        active_N: Tensor,
        recompute: Callable[[int], Tensor],
        tampered: Sequence[int] = (),
        present_N: Tensor | None = None,
    ) -> tuple[Verdict, dict[str, Any]]:
        """The round's verdict and a JSON-friendly record of what was flagged, checked and found.

        ``present_N`` (bool, optional): rows that arrived. A missing row (crashed, silent or late
        node) is neither scored, flagged nor re-computed: absence is not evidence of being Byzantine.
        """
        n = updates_ND.shape[0]
        if n != self.num_nodes:
            raise ValueError(f"expected {self.num_nodes} rows, got {n}")
        gen = torch.Generator().manual_seed(derive_seed(self.seed, round, 0x5EC))
        stage1 = None
        if self.detector is not None:
            stage1 = self.detector.inspect(updates_ND, generator=gen, present_N=present_N)
            self.detect_seconds += float(stage1.info.get("seconds", 0.0))
        verification = None
        rec: dict[str, Any] = {}
        if self.verifier is not None:
            flags = stage1.flags_N if stage1 is not None else torch.zeros(n, dtype=torch.bool)
            scores = stage1.scores_N if stage1 is not None else None
            nodes = self.verifier.select(flags, active_N, round, scores_N=scores, generator=gen)
            if present_N is not None:
                present = present_N.detach().cpu().numpy()
                nodes = [i for i in nodes if present[i]]
            verification = self.verifier.verify(updates_ND, nodes, recompute)
            self.recomputations += verification.recomputations
            self.verify_seconds += verification.seconds
            rec["verified"] = dict(self.verifier.last_selection)
            rec["recomputations"] = verification.recomputations
            rec["verify_s"] = round_(verification.seconds)
        verdict = make_verdict(n, stage1=stage1, verification=verification, tampered=tampered)
        if verification is not None:  # a quarantined node resting from probation was not seen
            seen_N = active_N.detach().cpu().numpy().astype(bool)
            seen_N |= verdict.flags_N.numpy() | verdict.confirmed_N.numpy()
            seen_N[verification.checked] = True
            verdict = dataclasses.replace(verdict, observed_N=torch.from_numpy(seen_N))
        self.rounds += 1
        rec.update({k: v for k, v in verdict.info.items() if v})
        return verdict, rec

    def cost_summary(self) -> dict[str, Any]:
        """The extra work security cost: re-computations and seconds, in total and per round."""
        r = max(self.rounds, 1)
        return {
            "recomputations": self.recomputations,
            "recomputations_per_round": round_(self.recomputations / r),
            "verify_seconds": round_(self.verify_seconds),
            "verify_seconds_per_round": round_(self.verify_seconds / r),
            "detect_seconds": round_(self.detect_seconds),
            "detect_seconds_per_round": round_(self.detect_seconds / r),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict() if self.detector else None,
            "verifier": self.verifier.state_dict() if self.verifier else None,
            "rounds": self.rounds,
            "recomputations": self.recomputations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.verifier is not None and state.get("verifier") is not None:
            self.verifier.load_state_dict(state["verifier"])
        if self.detector is not None and state.get("detector") is not None:
            self.detector.load_state_dict(state["detector"])
        self.rounds, self.recomputations = int(state["rounds"]), int(state["recomputations"])


def round_(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


def build_security(cfg: Config, *, num_nodes: int, history: bool = True) -> SecurityLayer | None:
    """The configured security layer, or None when detection and verification are both off.

    ``history``: stage 1 may keep per-node memory (rows are nodes whose identity is stable);
    False where a row can change owner (a pipeline stage group's replica rows).
    """
    s = cfg.security
    if not (s.attack_detection or s.gradient_verification):
        return None
    try:
        detector = (
            Stage1Detector(
                methods=tuple(s.detection_methods),
                combine=s.detection_combine,
                num_coords=s.detection_coords,
                params=s.detection_params,
                history=history,
            )
            if s.attack_detection
            else None
        )
        verifier = (
            GradientVerifier(
                rtol=s.verification_rtol,
                atol=s.verification_atol,
                spot_check_fraction=s.spot_check_fraction,
                seed=cfg.seed,
                watch_rounds=s.watch_rounds,
                verify_quarantined=s.verify_quarantined,
                warmup_rounds=s.warmup_rounds,
                probation_max_interval=s.probation_max_interval,
            )
            if s.gradient_verification
            else None
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"security: {err}") from None
    if detector is not None and "mandera" in detector.methods:  # its null, simulated once per N, at set-up
        from trustworthy_dl.security.mandera import warm_null

        warm_null(num_nodes, history=detector.history is not None, **detector.params.get("mandera", {}))
    return SecurityLayer(num_nodes, detector=detector, verifier=verifier, seed=cfg.seed)
