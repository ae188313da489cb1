"""SignGuard (Xu, Huang, Zhang, Liu, "SignGuard: Byzantine-robust federated learning through
collaborative malicious gradient filtering", ICDCS 2022).

Rule: (1) norm filter: keep the rows whose norm over the median norm M lies in
[``lower``, ``upper``]; (2) sign clustering: on a random ``sample_fraction`` of the coordinates,
describe each row by its fractions of positive, zero and negative values, cluster these points with
mean shift (flat kernel, bandwidth = mean distance to the ``quantile`` * n-th nearest neighbour, as
scikit-learn's ``estimate_bandwidth``) and keep the largest cluster; (3) average the rows kept by
both filters, each clipped to norm M.
Tolerance: 2f < n (the honest rows must be the majority cluster).

Cost: one pass for the norms, the sign counts on the sampled coordinates, one pass for the output.
The coordinates are sampled as random blocks of 4096 (contiguous, so the reads stream).
``weights_N`` are honoured in the final average. Randomness: ``round_generator(seed, round)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import Fraction, NonNegInt, PosFloat, check_f, require
from trustworthy_dl.aggregation._random import round_generator
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.errors import ConfigError

__all__ = ["SignGuard", "mean_shift_largest_cluster"]

_CHUNK = 4096


def _sign_features(rows: Rows, fraction: float, gen: torch.Generator) -> Tensor:
    """(M, 3) float64: fractions of positive, zero and negative values on sampled coordinates."""
    X, D = rows.X, rows.D
    nchunks = -(-D // _CHUNK)
    k = max(1, math.ceil(fraction * nchunks))
    chosen = torch.randperm(nchunks, generator=gen)[:k].sort().values.tolist()
    coef = None if rows.coef is None else rows.coef.to(X.dtype)
    pos = torch.zeros(rows.n, dtype=torch.float64, device=X.device)
    neg = torch.zeros_like(pos)
    total = 0
    for ci in chosen:
        s = ci * _CHUNK
        block = X[:, s : min(D, s + _CHUNK)]
        if coef is not None:
            block = coef @ torch.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        pos += (block > 0).sum(1)
        neg += (block < 0).sum(1)
        total += block.shape[1]
    return torch.stack([pos, total - pos - neg, neg], 1) / total


def mean_shift_largest_cluster(points_PK: Tensor, quantile: float = 0.3, max_iter: int = 300) -> Tensor:
    """(P,) bool: the members of the largest mean-shift cluster (flat kernel)."""
    p = points_PK.shape[0]
    if p <= 2:
        return torch.ones(p, dtype=torch.bool, device=points_PK.device)
    dist = torch.cdist(points_PK, points_PK)
    k = max(1, int(p * quantile))
    # summed in sorted order, so the bandwidth does not depend on the order of the rows
    bandwidth = float(dist.sort(dim=1).values[:, min(k, p) - 1].sort().values.mean())
    if bandwidth <= 0:
        return torch.ones(p, dtype=torch.bool, device=points_PK.device)
    # Points often sit exactly at the bandwidth (sign fractions are multiples of 1/total): compare
    # with a margin far above rounding, so that a row order's last-bit differences cannot flip them.
    reach = bandwidth * (1 + 1e-9)
    modes = points_PK.clone()
    for _ in range(max_iter):
        within = (torch.cdist(modes, points_PK) <= reach).to(points_PK.dtype)
        new = within @ points_PK / within.sum(1, keepdim=True)
        shift = float((new - modes).norm(dim=1).max())
        modes = new
        if shift <= 1e-3 * bandwidth:
            break
    # Merge modes: strongest first (most points within the bandwidth; ties by coordinates). The
    # modes are rounded so that the tie order is the same whatever the order of the rows.
    modes = modes.round(decimals=9)
    strength = (torch.cdist(modes, points_PK) <= reach).sum(1)
    keys = sorted(range(p), key=lambda i: (-int(strength[i]), *modes[i].tolist()))
    centres: list[int] = []
    for i in keys:
        if all(float((modes[i] - modes[j]).norm()) > reach for j in centres):
            centres.append(i)
    label = torch.cdist(points_PK, modes[centres]).argmin(1)
    sizes = torch.bincount(label, minlength=len(centres))
    return label == int(torch.argmax(sizes))  # first (strongest) centre among the largest


@AGGREGATORS.register("signguard", "sign_guard")
class SignGuard:
    """Stateful (round counter) SignGuard: ``sg(updates_ND, weights_N=None, *, f=None)``."""

    def __init__(
        self,
        *,
        f: NonNegInt,
        lower: PosFloat = 0.1,
        upper: PosFloat = 3.0,
        sample_fraction: Fraction = 0.1,
        quantile: Fraction = 0.3,
        seed: NonNegInt = 0,
    ) -> None:
        self.f = check_f("signguard", f)
        if lower >= upper:
            raise ConfigError(f"signguard: lower={lower} must be below upper={upper}")
        self.lower, self.upper = float(lower), float(upper)
        self.sample_fraction, self.quantile, self.seed = float(sample_fraction), float(quantile), seed
        self.rounds = 0

    def __call__(
        self, updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: int | None = None
    ) -> AggResult:
        rows = as_rows(updates, weights_N, "signguard")
        f = self.f if f is None else check_f("signguard", f)
        n = rows.n
        require(2 * f < n, "signguard", f=f, n=n, condition="2f < n", stage=rows.stage)
        gen = round_generator(self.seed, self.rounds)
        self.rounds += 1
        norms = rows.sq_norms().sqrt()  # +inf for far rows
        far = ~torch.isfinite(norms)
        finite = norms[~far]
        med = float(finite.median()) if finite.numel() else 0.0  # lower median
        ratio = norms / med if med > 0 else torch.where(norms > 0, float("inf"), 1.0)
        by_norm = (ratio >= self.lower) & (ratio <= self.upper) & ~far
        feats = _sign_features(rows, self.sample_fraction, gen)
        by_sign = torch.zeros(n, dtype=torch.bool, device=norms.device)
        live = (~far).nonzero().flatten()
        if live.numel():
            by_sign[live] = mean_shift_largest_cluster(feats[live], self.quantile)
        good = by_norm & by_sign
        if not bool(good.any()):  # beyond tolerance: fall back to the norm filter, then finite rows
            good = by_norm if bool(by_norm.any()) else ~far
        clip = torch.where(norms > med, med / norms, 1.0) if med > 0 else torch.ones_like(norms)
        w = rows.weights * good
        w = w / w.sum() if float(w.sum()) > 0 else good.to(torch.float64) / max(1, int(good.sum()))
        e = (w * clip).masked_fill(~good, 0.0)
        info = {
            "n": n,
            "median_norm": med,
            "norm_filter": int(by_norm.sum()),
            "sign_filter": int(by_sign.sum()),
        }
        return rows.result(rows.combine(e), e, good, info)

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) - {"rounds"}:
            raise ConfigError(
                f"signguard state has unknown keys {sorted(set(state) - {'rounds'})}; valid: rounds"
            )
        self.rounds = int(state.get("rounds", 0))
