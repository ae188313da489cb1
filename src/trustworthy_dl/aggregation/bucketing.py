"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
bucketing", ICLR 2022).

Pre-aggregation rule: shuffle the n rows at random, cut them into ceil(n / s) buckets of s rows
(the last one may be smaller) and replace each bucket by the (weighted) mean of its rows. A bucket's
weight is the sum of its members' weights.
Tolerance: none of its own; at most f buckets hold a Byzantine row, so the next stage checks its
condition with the same f and n = ceil(n / s) (e.g. Krum then needs 2f + 2 < ceil(n / s)).

Only the (ceil(n / s), n) mixing matrix is recorded (``_rows``); no data is copied. In the result,
a node's weight is its share of the aggregate through its bucket, and a node is selected when its
bucket is. Randomness: round r shuffles with ``round_generator(seed, r)``; the round counter is the
state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosInt, check_f
from trustworthy_dl.aggregation._random import round_generator
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import PRE_AGGREGATORS
from trustworthy_dl.errors import ConfigError

__all__ = ["Bucketing"]


@PRE_AGGREGATORS.register("bucketing", "buckets")
class Bucketing:
    """Stateful (round counter) bucketing: ``b(updates, *, f=None) -> Rows``."""

    def __init__(self, *, f: NonNegInt = 0, s: PosInt = 2, seed: NonNegInt = 0) -> None:
        self.f = check_f("bucketing", f)
        self.s, self.seed = s, seed
        self.rounds = 0

    def __call__(
        self, updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: int | None = None
    ) -> Rows:
        rows = as_rows(updates, weights_N, "bucketing")
        n, s = rows.n, self.s
        perm = torch.randperm(n, generator=round_generator(self.seed, self.rounds, salt=1)).tolist()
        self.rounds += 1
        nb = -(-n // s)
        w = rows.weights.cpu()
        C = torch.zeros(nb, n, dtype=torch.float64)
        for b in range(nb):
            members = perm[b * s : (b + 1) * s]
            wm = w[members]
            tot = float(wm.sum())
            C[b, members] = wm / tot if tot > 0 else torch.full_like(wm, 1.0 / len(members))
        wb = C.new_tensor([float(w[perm[b * s : (b + 1) * s]].sum()) for b in range(nb)])
        return rows.mix(C, wb.to(rows.weights.device), f"bucketing(s={s})")

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) - {"rounds"}:
            raise ConfigError(
                f"bucketing state has unknown keys {sorted(set(state) - {'rounds'})}; valid: rounds"
            )
        self.rounds = int(state.get("rounds", 0))
