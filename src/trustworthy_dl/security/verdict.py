"""The security layer's verdict on one round, the one thing the trust layer consumes.

:func:`make_verdict` merges the evidence of the round's checks, strongest last:

1. stage 1 (statistics): evidence 1.0 for a flagged node (a suspicion);
2. stage 2 (re-computation): a mismatch confirms (1.0), a match clears (0.0, overriding stage 1:
   the node did the honest work, whatever its statistics looked like); BTARD (Gorbunov et al.
   2022) treats a failed re-computation as proof;
3. non-finite updates and tampered parameter copies confirm (1.0): they need no statistics.

Legend: N nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trustworthy_dl.security.detector import Stage1Result
from trustworthy_dl.security.verification import VerificationResult

__all__ = ["Verdict", "make_verdict"]


@dataclass(frozen=True)
class Verdict:
    """Per-node evidence for one round.

    Attributes:
        evidence_N: float64 in [0, 1]; > 0 lowers the node's trust (TrustManager.update).
        flags_N: bool, stage 1's statistical flags (before verification).
        confirmed_N: bool, proven misbehaviour: re-computation mismatch, non-finite update or
            tampered parameters.
        cleared_N: bool, re-computed and found honest this round.
        info: JSON-friendly lists of node ids per category, for the round log.
        observed_N: bool, nodes whose work this round's checks saw (None: all). A quarantined
            node that was neither checked nor flagged was not seen: its trust stands still.
    """

    evidence_N: Tensor
    flags_N: Tensor
    confirmed_N: Tensor
    cleared_N: Tensor
    info: dict[str, Any] = field(default_factory=dict)
    observed_N: Tensor | None = None

    @property
    def positive_N(self) -> Tensor:
        """bool, nodes the round counts against (evidence > 0): the "flag" of detection metrics."""
        return self.evidence_N > 0

    def aggregate_mask(self, active_N: Tensor) -> Tensor:
        """bool, rows to aggregate this round: trusted (``active_N``) and not suspect this round.

        Trust needs a few rounds of evidence to quarantine a node, but a row that this round's
        checks count against (a confirmed mismatch, a non-finite row, an unverified stage-1
        flag) should not reach this round's aggregate: one round of Gaussian noise with std 200
        ruins a model that a plain mean aggregates.
        """
        return active_N.bool().cpu() & ~self.positive_N


def make_verdict(
    num_nodes: int,
    *,
    stage1: Stage1Result | None = None,
    verification: VerificationResult | None = None,
    tampered: Sequence[int] = (),
) -> Verdict:
    """Combine stage 1, stage 2 and the parameter monitor into one :class:`Verdict`.

    Args:
        num_nodes: N.
        stage1: the detector's result (None: detection off).
        verification: the verifier's result (None: verification off).
        tampered: node ids whose parameter digest differed (ParameterMonitor.check).
    """

    def mask(ids: Sequence[int]) -> np.ndarray:
        m = np.zeros(num_nodes, dtype=bool)
        m[list(ids)] = True
        return m

    # numpy for the per-node bookkeeping (a few dozen values: ~1 us an op against torch's ~5)
    if stage1 is not None:
        flags_N = stage1.flags_N.detach().cpu().numpy().astype(bool)
        evidence_N = stage1.evidence_N.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
        nonfinite = list(stage1.info.get("nonfinite", []))
    else:
        flags_N = np.zeros(num_nodes, dtype=bool)
        evidence_N = np.zeros(num_nodes)
        nonfinite = []
    if flags_N.shape != (num_nodes,):
        raise ValueError(f"stage-1 result has {flags_N.size} nodes, expected {num_nodes}")
    mismatched = verification.mismatched if verification is not None else []
    cleared_N = mask(verification.cleared if verification is not None else [])
    confirmed_N = mask(mismatched) | mask(tampered) | mask(nonfinite)
    evidence_N[cleared_N] = 0.0
    evidence_N[confirmed_N] = 1.0  # confirmation wins over a (stale) match
    cleared_N &= ~confirmed_N
    evidence_N = np.clip(evidence_N, 0.0, 1.0)
    info = {
        "flagged": np.flatnonzero(flags_N).tolist(),
        "confirmed": np.flatnonzero(confirmed_N).tolist(),
        "cleared": np.flatnonzero(cleared_N).tolist(),
        "mismatched": list(mismatched),
        "tampered": list(tampered),
        "nonfinite": nonfinite,
        "positive": np.flatnonzero(evidence_N > 0).tolist(),
    }
    t = torch.from_numpy
    return Verdict(t(evidence_N), t(flags_N), t(confirmed_N), t(cleared_N), info)
