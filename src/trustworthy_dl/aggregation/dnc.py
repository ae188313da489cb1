"""Divide-and-Conquer, DnC (Shejwalkar, Houmansadr, "Manipulating the Byzantine: optimizing model
poisoning attacks and defenses for federated learning", NDSS 2021, Algorithm 2).

Rule: repeat ``iterations`` times: sample ``subsample_dim`` coordinates at random, centre the
sampled rows on their mean, take the top right singular vector v of the centred matrix, score
each row by its squared projection on v (from the (n, n) eigenproblem of the centred Gram) and mark the ``floor(c * f)`` highest scores as outliers.
Return the (weighted) mean of the rows never marked.
Tolerance: 2f < n (and c * f < n so that some row survives).

The scores need only an (n, subsample_dim) sample; the data is read once for the row norms
(which detect non-finite rows: they are outliers first) and once for the output.
Randomness: round r samples with ``round_generator(seed, r)``; the round counter is the state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosFloat, PosInt, check_f, require
from trustworthy_dl.aggregation._random import round_generator
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.errors import ConfigError

__all__ = ["DnC"]


@AGGREGATORS.register("dnc", "divide_and_conquer")
class DnC:
    """Stateful (round counter) DnC: ``dnc(updates_ND, weights_N=None, *, f=None) -> AggResult``."""

    def __init__(
        self,
        *,
        f: NonNegInt,
        iterations: PosInt = 1,
        subsample_dim: PosInt = 10_000,
        c: PosFloat = 1.0,
        seed: NonNegInt = 0,
    ) -> None:
        self.f = check_f("dnc", f)
        self.iterations, self.subsample_dim, self.c, self.seed = iterations, subsample_dim, float(c), seed
        self.rounds = 0

    def __call__(
        self, updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: int | None = None
    ) -> AggResult:
        rows = as_rows(updates, weights_N, "dnc")
        f = self.f if f is None else check_f("dnc", f)
        n = rows.n
        require(2 * f < n, "dnc", f=f, n=n, condition="2f < n", stage=rows.stage)
        n_drop = math.floor(self.c * f)
        require(n_drop < n, "dnc", f=f, n=n, condition=f"floor(c * f) < n (c={self.c})", stage=rows.stage)
        gen = round_generator(self.seed, self.rounds)
        self.rounds += 1
        far = rows.far()
        good = ~far
        X, D = rows.X, rows.D
        coef = rows.coefficients().to(X.dtype)
        b = min(self.subsample_dim, D)
        for _ in range(self.iterations):
            if b == D:
                sample = X
            else:
                cols = torch.randint(D, (b,), generator=gen).to(X.device)
                sample = X.index_select(1, cols)
            clean = torch.nan_to_num(sample, nan=0.0, posinf=0.0, neginf=0.0)
            Y = (coef @ clean).to(torch.float64)  # (n, b)
            live = ~far
            mu = Y[live].mean(0) if bool(live.any()) else torch.zeros_like(Y[0])
            Yc = (Y - mu).masked_fill(far[:, None], 0.0)
            # Top right singular vector v of Yc: with Yc Yc^T u = lam u, (Yc v)_i^2 = lam u_i^2, so
            # the (n, n) eigenproblem replaces an SVD of the (n, b) sample.
            lam, U = torch.linalg.eigh(Yc @ Yc.T)
            scores = (lam[-1] * U[:, -1].square()).masked_fill(far, float("inf"))
            order = torch.sort(scores, descending=True, stable=True).indices
            keep = torch.ones(n, dtype=torch.bool, device=far.device)
            keep[order[:n_drop]] = False
            good &= keep
        if not bool(good.any()):  # beyond tolerance: keep the finite rows
            good = ~far if bool((~far).any()) else torch.ones_like(far)
        w = rows.weights * good
        total = float(w.sum())
        e = w / total if total > 0 else good.to(torch.float64) / int(good.sum())
        info = {"n": n, "removed": (~good).nonzero().flatten().tolist()}
        return rows.result(rows.combine(e), e, good, info)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) - {"rounds"}:
            raise ConfigError(f"dnc state has unknown keys {sorted(set(state) - {'rounds'})}; valid: rounds")
        self.rounds = int(state.get("rounds", 0))
