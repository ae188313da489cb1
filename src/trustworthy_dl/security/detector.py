"""Stage 1 of detection: cheap statistics over the round's (N, D) updates, every round.

The detector samples a random coordinate subset (so the cost stays small for large D), runs the
configured methods of :data:`~trustworthy_dl.security.base.DETECTION_METHODS` on the finite rows
and combines their flags. A row with any non-finite entry is flagged at once with evidence 1.
Its output is a statistical suspicion: stage 2 (:mod:`trustworthy_dl.security.verification`)
confirms or clears it by re-computation, in the spirit of BTARD (Gorbunov et al. 2022, "Secure
distributed training at scale").

Legend: N nodes, D flat parameters, d sampled coordinates.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Importing the method modules registers them.
from trustworthy_dl.aggregation.sharding import reduce_partial, shard_columns
from trustworthy_dl.security import distance as _distance  # noqa: F401
from trustworthy_dl.security import mandera as _mandera  # noqa: F401
from trustworthy_dl.security import mandera_paper as _mandera_paper  # noqa: F401
from trustworthy_dl.security.base import DETECTION_METHODS, finite_rows, json_list, sample_coords
from trustworthy_dl.security.rank_history import RankHistory

__all__ = ["COMBINE_RULES", "Stage1Detector", "Stage1Result"]

COMBINE_RULES = ("any", "all", "vote")


@dataclass(frozen=True)
class Stage1Result:
    """Stage 1's verdict on one round.

    Attributes:
        flags_N: bool, nodes flagged by the combined rule or for non-finite updates.
        scores_N: float64 combined suspicion, 1.0 at the flag threshold (inf for non-finite rows).
        evidence_N: float64 in [0, 1]: 1.0 for flagged nodes, 0.0 otherwise.
        info: JSON-friendly diagnostics: ``nonfinite`` (node ids), ``flagged_by`` (method ->
            node ids), ``methods`` (method -> its small diagnostics), ``num_coords``,
            ``seconds``; with ``diagnostics=True`` also ``scores`` (method -> per-node scores)
            and each method's per-node values (z scores, rank features) under ``methods``.
    """

    flags_N: Tensor
    scores_N: Tensor
    evidence_N: Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Stage1Detector:
    """Runs the configured detection methods on a coordinate subset and combines them.

    Args:
        methods: registered method names, e.g. ``("mandera", "distance")``.
        combine: "any" (flagged by at least one method), "all" (by every method) or "vote"
            (by at least half of them, rounded up).
        num_coords: coordinates sampled per round; None or >= D uses all of them.
        params: per-method keyword arguments, e.g. ``{"distance": {"thresholds": {"norm": 5.0}}}``.
        diagnostics: also log per-node scores and each method's per-node values in ``info``
            (rounded JSON lists: ~0.2 ms a round at N = 16, more than the rank statistics).
        history: keep the rank method's per-node memory across rounds (its
            ``history_decay`` > 0; :mod:`~trustworthy_dl.security.rank_history`): rows are node
            ids, row i of every round the same node. False: every round on its own (for rows
            whose owner may change, and for one-off calls).
    """

    def __init__(
        self,
        *,
        methods: Sequence[str] = ("mandera", "distance"),
        combine: str = "any",
        num_coords: int | None = 100_000,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        diagnostics: bool = False,
        history: bool = True,
    ) -> None:
        if not methods:
            raise ValueError("Stage1Detector needs at least one method")
        self.methods = [DETECTION_METHODS.canonical(m) for m in methods]
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:  # (an alias counts as its method: "ranks" is "mandera")
            raise ValueError(f"detection methods listed twice: {repeated} (given {list(methods)})")
        if combine not in COMBINE_RULES:
            raise ValueError(f"unknown combine rule {combine!r}; valid: {', '.join(COMBINE_RULES)}")
        if num_coords is not None and num_coords < 1:
            raise ValueError(f"num_coords must be >= 1 or None, got {num_coords}")
        params = dict(params or {})
        extra = sorted(set(params) - set(methods) - set(self.methods))
        if extra:
            raise ValueError(f"params given for methods not in use: {extra}; methods: {self.methods}")
        self.params = {DETECTION_METHODS.canonical(k): dict(v) for k, v in params.items()}
        if any("history" in p for p in self.params.values()):
            raise ValueError("history is kept by the detector, not a parameter (use history_decay)")
        decay = self.params.get("mandera", {}).get("history_decay", _default_decay())
        self.history = RankHistory(decay) if history and "mandera" in self.methods and decay > 0 else None
        self.combine = combine
        self.num_coords = num_coords
        self.diagnostics = diagnostics
        m = len(self.methods)
        self._needed = {"any": 1, "all": m, "vote": math.ceil(m / 2)}[combine]

    def inspect(
        self,
        updates_ND: Tensor,
        *,
        generator: torch.Generator | None = None,
        reference_D: Tensor | None = None,
        present_N: Tensor | None = None,
    ) -> Stage1Result:
        """Flag suspicious rows of ``updates_ND``.

        Args:
            updates_ND: the round's updates, one row per node (quarantined nodes included:
                they stay under observation).
            generator: draws the coordinate subset (derive it from (seed, round)); None uses a
                fixed seed.
            reference_D: optional robust reference for the distance scores (e.g. the robust
                aggregate); sliced to the same coordinates.
            present_N: bool, rows that arrived this round (None: all). A missing row is neither
                scored nor flagged: absence is not evidence of being Byzantine.
        """
        if updates_ND.dim() != 2:
            raise ValueError(f"expected (N, D) updates, got shape {tuple(updates_ND.shape)}")
        t0 = time.perf_counter()
        n, dim = updates_ND.shape
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        finite_N = finite_rows(updates_ND).cpu()
        cols = shard_columns()
        if cols is not None:  # sharded round: a row is finite if every process's slice of it is
            finite_N = reduce_partial((~finite_N).to(torch.float64)) == 0
        # the per-node bookkeeping in numpy (a few dozen values: ~1 us an op against torch's ~5)
        finite_np = finite_N.numpy().astype(bool)
        use_np = finite_np
        if present_N is not None:
            present_np = present_N.detach().cpu().numpy().astype(bool)
            finite_np |= ~present_np  # a missing row is not "non-finite"
            use_np = finite_np & present_np
        if cols is None:
            idx_d = sample_coords(dim, self.num_coords, generator)
            num_coords = dim if idx_d is None else int(idx_d.numel())
        else:  # the coordinates gather mode would sample, those in this process's slice
            lo, hi, full = cols
            g_d = sample_coords(full, self.num_coords, generator)
            idx_d = None if g_d is None else g_d[(g_d >= lo) & (g_d < hi)] - lo
            num_coords = full if g_d is None else int(g_d.numel())
        x_Nd = updates_ND if idx_d is None else updates_ND.index_select(1, idx_d.to(updates_ND.device))
        every = bool(use_np.all())  # the usual round: no copy of the rows
        x_Md = (x_Nd if every else x_Nd[torch.from_numpy(use_np).to(x_Nd.device)]).float().cpu()
        ref_d = None
        if reference_D is not None:
            ref_d = (
                reference_D if idx_d is None else reference_D.index_select(0, idx_d.to(reference_D.device))
            )
            ref_d = ref_d.float().cpu()
        rows = range(n) if every else np.flatnonzero(use_np).tolist()
        votes_N = np.zeros(n, dtype=np.int64)
        scores_KN = np.zeros((len(self.methods), n))
        flagged_by: dict[str, list[int]] = {}
        method_info: dict[str, Any] = {}
        for k, name in enumerate(self.methods):
            if x_Md.shape[0] < 3:  # too few finite rows to tell anyone apart
                flagged_by[name] = []
                continue
            kwargs = self.params.get(name, {})
            if name == "mandera" and self.history is not None:
                kwargs = {**kwargs, "history": self.history.bind(rows)}
            res = DETECTION_METHODS.get(name)(x_Md, reference_d=ref_d, **kwargs)
            got_flags = res.flags_N.detach().cpu().numpy().astype(bool)
            got_scores = res.scores_N.detach().to(device="cpu", dtype=torch.float64).numpy()
            if every:
                flags_N, scores_KN[k] = got_flags, got_scores
            else:
                flags_N = np.zeros(n, dtype=bool)
                flags_N[use_np], scores_KN[k, use_np] = got_flags, got_scores
            votes_N += flags_N
            flagged_by[name] = np.flatnonzero(flags_N).tolist()
            method_info[name] = res.info
            if self.diagnostics:
                method_info[name] = {**res.info, **{key: _json(v) for key, v in res.per_node.items()}}
        combined_N = (votes_N >= self._needed) | ~finite_np
        # The score that decides the rule: the needed-th largest method score.
        best_N = -np.sort(-scores_KN, axis=0)[self._needed - 1]
        best_N[~finite_np] = math.inf
        info: dict[str, Any] = {
            "nonfinite": np.flatnonzero(~finite_np).tolist(),
            "flagged_by": flagged_by,
            "methods": method_info,
            "num_coords": num_coords,
        }
        if self.diagnostics:
            info["scores"] = {
                name: json_list(torch.from_numpy(scores_KN[k]), 3) for k, name in enumerate(self.methods)
            }
        info["seconds"] = time.perf_counter() - t0
        flags_t = torch.from_numpy(combined_N)
        return Stage1Result(flags_t, torch.from_numpy(best_N), flags_t.to(torch.float64), info)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict() if self.history is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.history is not None and state.get("history") is not None:
            self.history.load_state_dict(state["history"])


def _default_decay() -> float:
    """The rank method's default ``history_decay`` (from its signature: one source of truth)."""
    return float(inspect.signature(DETECTION_METHODS.get("mandera")).parameters["history_decay"].default)


def _json(values: Tensor) -> list[Any]:
    """Per-node values (N or N x F) as rounded JSON lists."""
    return json_list(values, 3) if values.dim() == 1 else [json_list(row) for row in values]
