"""A model cut into pipeline stages, each a :class:`FlatModel` over its slice of one flat vector.

``params_D`` is the whole model's flat vector, stage by stage: stage s owns columns
``cols[s] = slice(lo_s, hi_s)`` and its parameters are views into that slice, so the coordinator's
optimizer, the snapshots and the checkpoints all see one (D,) vector, while each update group
(stage s) works on its own (M, D_s) block of columns.

A parameter shared by two stages (GPT-2's tied input and output embedding, in the first and the
last stage) gets its own copy in the later stage, as Megatron-style pipelines do. The two copies
start equal; :meth:`StagedModel.sum_tied` makes both gradient slices the sum of the two, so
that the same optimizer step keeps the copies equal and the update is the unsplit model's.

Legend: S stages, D all flat parameters (the tied copy counted twice), D_s stage s's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.models.stages import split_into_stages

__all__ = ["StagedModel", "Tie"]


@dataclass(frozen=True)
class Tie:
    """Columns of two stages that hold copies of one parameter (kept equal)."""

    name: str
    first: slice
    second: slice


class StagedModel:
    """``model`` cut into ``num_stages`` stages over one flat parameter vector.

    Attributes:
        stages: the S stage modules (``nn.Sequential`` of whole blocks).
        flats: one :class:`FlatModel` per stage, viewing ``params_D[cols[s]]``.
        params_D: the flat vector of every stage (an ``nn.Parameter`` for the optimizer).
        cols: stage s's columns of ``params_D``.
        ties: columns holding copies of a shared parameter.
        model: the stages in sequence (evaluation runs it; it computes the unsplit model).
        unsplit: the model as given: its modules are the stages' (no copy), so its
            ``state_dict`` holds the trained values under the model's own names (what the run's
            ``model.safetensors`` saves); a tied parameter split across stages appears as its
            equal copies.
    """

    def __init__(
        self, model: nn.Module, num_stages: int, *, block_weights: list[float] | None = None
    ) -> None:
        self.stages = split_into_stages(model, num_stages, block_weights=block_weights)
        seen: dict[int, tuple[int, str]] = {}
        tied: list[tuple[int, str, int, str]] = []  # (first stage, name, later stage, name)
        for s, stage in enumerate(self.stages):
            for name, p in list(stage.named_parameters(remove_duplicate=False)):
                if not p.requires_grad:
                    continue
                if id(p) in seen and seen[id(p)][0] != s:
                    _set_parameter(stage, name, nn.Parameter(p.detach().clone()))
                    tied.append((*seen[id(p)], s, name))
                else:
                    seen.setdefault(id(p), (s, name))
        sizes = [sum(p.numel() for p in st.parameters() if p.requires_grad) for st in self.stages]
        first = next(p for st in self.stages for p in st.parameters())
        whole = torch.empty(sum(sizes), dtype=first.dtype, device=first.device)
        self.cols: list[slice] = []
        lo = 0
        for d in sizes:
            self.cols.append(slice(lo, lo + d))
            lo += d
        self.flats = [FlatModel(st, buffer_D=whole[c]) for st, c in zip(self.stages, self.cols)]
        self.params_D = nn.Parameter(whole)
        self.ties = [self._tie(a, na, b, nb) for a, na, b, nb in tied]
        self.model = nn.Sequential(*self.stages)
        self.unsplit = model

    def frozen_columns(self, skipped_S: Tensor) -> Tensor | None:
        """bool (D,): the columns of the stages marked in ``skipped_S`` (a step leaves them alone),
        less a tied copy whose partner is updated (the copies take the same summed update and
        must stay equal); None when no stage is skipped."""
        if not bool(skipped_S.any()):
            return None
        frozen_D = torch.zeros(self.num_params, dtype=torch.bool)
        for s in skipped_S.nonzero().flatten().tolist():
            frozen_D[self.cols[s]] = True
        for tie in self.ties:
            if bool(frozen_D[tie.first].all()) != bool(frozen_D[tie.second].all()):
                frozen_D[tie.first] = False
                frozen_D[tie.second] = False
        return frozen_D.to(self.params_D.device)

    def _tie(self, a: int, name_a: str, b: int, name_b: str) -> Tie:
        def cols_of(s: int, name: str) -> slice:
            flat, off = self.flats[s], self.cols[s].start
            for n, k in zip(flat.names, flat.numels):
                if n == name:
                    return slice(off, off + k)
                off += k
            raise KeyError(name)

        return Tie(f"{a}.{name_a}={b}.{name_b}", cols_of(a, name_a), cols_of(b, name_b))

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_params(self) -> int:
        return self.params_D.numel()

    def stage_sizes(self) -> list[int]:
        return [c.stop - c.start for c in self.cols]

    def sum_tied(self, vec_D: Tensor) -> None:
        """In place: both copies' columns of ``vec_D`` (a gradient or update) become their sum."""
        for t in self.ties:
            total = vec_D[t.first] + vec_D[t.second]
            vec_D[t.first] = total
            vec_D[t.second] = total


def _set_parameter(module: nn.Module, dotted: str, value: nn.Parameter) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, value)
