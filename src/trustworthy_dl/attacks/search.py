"""Line search on an attack's scale against the aggregator in use (the "optimal" attacks).

Objective (maximised): ``|| agg([honest_HD; byz(s) x B]) - mean(honest_HD) ||_2``, the distance the
Byzantine rows push the aggregate away from the honest mean. Search over ``s > 0``: start at the
fixed-scale attack's value, double (or halve) while the objective grows, then golden-section
refinement inside the bracket; every evaluation is kept, so the result is never worse than the
starting scale. This is the tuning the optimal ALIE / IPM variants of e.g. Allouah et al., "Fixing
by Mixing", AISTATS 2023 and the ByzFL benchmark perform.

Legend: H honest rows, B Byzantine rows, D flat parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.attacks.context import AttackContext, aggregate_value, probing

__all__ = ["ScaleSearch", "maximise_scale", "optimise_scale"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def maximise_scale(
    objective: Callable[[float], float], *, init: float, max_doublings: int, refine_steps: int
) -> tuple[float, float]:
    """Best ``(scale, value)`` of a 1-D ``objective`` over ``scale > 0`` (bounded evaluations).

    Non-finite objective values count as ``-inf``. Ties keep the earlier (starting) scale.
    """
    cache: dict[float, float] = {}

    def f(s: float) -> float:
        if s not in cache:
            v = float(objective(s))
            cache[s] = v if math.isfinite(v) else -math.inf
        return cache[s]

    best_s = init
    for step in (2.0, 0.5):  # grow first; shrink only if growing never helped
        s = init
        for _ in range(max_doublings):
            if f(s * step) > f(s):
                s *= step
            else:
                break
        if f(s) > f(best_s):
            best_s = s
        if best_s != init:
            break
    a, b = best_s / 2.0, best_s * 2.0
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    for _ in range(refine_steps):
        if f(c) >= f(d):
            b, d = d, c
            c = b - _INV_PHI * (b - a)
        else:
            a, c = c, d
            d = a + _INV_PHI * (b - a)
    s_best = init
    for s, v in cache.items():
        if v > cache[s_best]:
            s_best = s
    return s_best, cache[s_best]


def optimise_scale(
    name: str,
    honest_HD: Tensor,
    *,
    num_byzantine: int,
    context: AttackContext | None,
    make_byz: Callable[[float], Tensor],
    init: float,
    max_doublings: int,
    refine_steps: int,
) -> float:
    """The scale ``s`` whose ``make_byz(s)`` (a D vector) moves ``context.aggregator`` furthest."""
    aggregator: Callable[..., Any] | None = context.aggregator if context is not None else None
    if aggregator is None:
        raise ValueError(
            f"attack {name!r} searches its scale against the aggregator in use, but "
            "context.aggregator is None; pass the aggregator (AdversarialAttacker.corrupt(aggregator=...))"
        )
    mu_D = honest_HD.float().mean(0)

    def objective(s: float) -> float:
        byz_BD = make_byz(s).to(honest_HD.dtype).unsqueeze(0).expand(num_byzantine, -1)
        value_D = aggregate_value(aggregator, torch.cat([honest_HD, byz_BD]))
        return float(torch.linalg.vector_norm(value_D.float() - mu_D))

    with probing(aggregator):
        scale, _ = maximise_scale(
            objective, init=init, max_doublings=max_doublings, refine_steps=refine_steps
        )
    return scale


@dataclass
class ScaleSearch:
    """The search settings of an optimal attack (a mixin of its dataclass): at most
    ``max_doublings`` doublings or halvings from the start, then ``refine_steps`` golden-section steps."""

    max_doublings: int = 8
    refine_steps: int = 12

    def _check_search(self) -> None:
        from trustworthy_dl.attacks.base import check_int

        self.max_doublings = check_int("max_doublings", self.max_doublings, low=0)
        self.refine_steps = check_int("refine_steps", self.refine_steps, low=0)

    def _search(
        self,
        name: str,
        honest_HD: Tensor,
        num_byzantine: int,
        context: AttackContext | None,
        make_byz: Callable[[float], Tensor],
        init: float,
    ) -> float:
        return optimise_scale(
            name,
            honest_HD,
            num_byzantine=num_byzantine,
            context=context,
            make_byz=make_byz,
            init=init,
            max_doublings=self.max_doublings,
            refine_steps=self.refine_steps,
        )
