"""What an omniscient attacker may see in a round (threat model of DESIGN.md).

Legend: N nodes, H honest nodes, B Byzantine nodes, D flat parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["AttackContext", "aggregate_value"]


@dataclass(frozen=True)
class AttackContext:
    """The omniscient view of one round.

    Attributes:
        honest_ND: every node's honestly computed update of the round, before any corruption
            (the Byzantine nodes' own honest rows included); None when unknown.
        aggregator: the aggregator in use, ``agg(updates_ND) -> AggResult | Tensor``; None when
            unknown. Optimal attacks probe it; a stateful one (``state_dict``) is restored after.
        round: the round number.
        num_nodes: N (None: honest rows + Byzantine rows).
        byzantine_ids: ids of the Byzantine nodes, sorted.
    """

    honest_ND: Tensor | None = None
    aggregator: Callable[..., Any] | None = None
    round: int = 0
    num_nodes: int | None = None
    byzantine_ids: tuple[int, ...] = ()

    @property
    def honest_ids(self) -> list[int]:
        """Ids of the honest nodes (rows of ``honest_ND`` outside ``byzantine_ids``)."""
        n = (
            self.num_nodes
            if self.num_nodes is not None
            else (self.honest_ND.shape[0] if self.honest_ND is not None else 0)
        )
        byz = set(self.byzantine_ids)
        return [i for i in range(n) if i not in byz]

    @property
    def honest_HD(self) -> Tensor | None:
        """The honest nodes' updates (H, D), or None when ``honest_ND`` is unknown."""
        if self.honest_ND is None:
            return None
        if not self.byzantine_ids:
            return self.honest_ND
        idx = torch.tensor(self.honest_ids, dtype=torch.long, device=self.honest_ND.device)
        return self.honest_ND.index_select(0, idx)


def aggregate_value(aggregator: Callable[..., Any], updates_ND: Tensor) -> Tensor:
    """The aggregate of ``updates_ND``: ``.value_D`` of an AggResult, or the tensor itself."""
    out = aggregator(updates_ND)
    value = getattr(out, "value_D", out)
    if not isinstance(value, Tensor):
        raise TypeError(f"aggregator returned {type(out).__name__}, expected an AggResult or a Tensor")
    return value


@contextmanager
def probing(aggregator: Callable[..., Any]) -> Iterator[None]:
    """Call ``aggregator`` freely inside; a stateful one (state_dict / load_state_dict) is restored after."""
    state_dict = getattr(aggregator, "state_dict", None)
    load = getattr(aggregator, "load_state_dict", None)
    saved = copy.deepcopy(state_dict()) if callable(state_dict) and callable(load) else None
    try:
        with torch.no_grad():
            yield
    finally:
        if saved is not None and callable(load):
            load(saved)
