"""The probe an optimal attack calls: the aggregate this round would produce from given rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from trustworthy_dl.engine.loop import RoundLoop

__all__ = ["RoundAggregation"]


class RoundAggregation:
    """``probe(updates_ND)``: the aggregate this round would produce from ``updates_ND`` (the
    aggregator over the rows of the trusted nodes, with f less the quarantined nodes), for the
    optimal attacks. Given other than N rows (the colluders' own rows and their candidates), the
    rule runs on all of them. Other attributes (``state_dict``...) are the run aggregator's, so
    that a stateful rule is restored after probing."""

    def __init__(self, loop: RoundLoop, active_N: Tensor, weights_N: Tensor) -> None:
        self._loop = loop
        self._active = active_N.clone()
        self._f = loop.f_budget(self._active)
        self._w = loop.trust_weights(self._active, weights_N)

    def __call__(self, updates_ND: Tensor) -> Tensor:
        if updates_ND.shape[0] == self._active.numel():
            result, _ = self._loop.robust(updates_ND[self._active.to(updates_ND.device)], self._f, self._w)
        else:
            result, _ = self._loop.robust(updates_ND, self._f)
        return torch.zeros_like(updates_ND[0]) if result is None else result.value_D

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loop.exp.aggregator, name)
