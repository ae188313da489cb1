"""One flat parameter vector behind a model.

The model's parameters become views into a single flat tensor ``params_D`` so that the
coordinator's optimizer, the aggregators and the per-node gradient rows all speak in flat
(D,) vectors, with no copies between the model and the (N, D) update matrix.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

__all__ = ["FlatModel"]


class FlatModel:
    """Re-homes ``model``'s trainable parameters into one flat buffer.

    Attributes:
        model: the module (its parameters now view ``params_D``).
        params_D: the flat parameter vector (an ``nn.Parameter`` so optimizers accept it).
        names: parameter names, in flat order.
    """

    def __init__(self, model: nn.Module, *, buffer_D: Tensor | None = None) -> None:
        """``buffer_D``: re-home the parameters into this existing tensor (a pipeline stage's slice of
        the whole model's flat vector) instead of a new one; it must have exactly their size."""
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.numels = [p.numel() for p in self.params]
        self.shapes = [p.shape for p in self.params]
        dtype, device = self.params[0].dtype, self.params[0].device
        if buffer_D is None:
            flat = torch.empty(sum(self.numels), dtype=dtype, device=device)
        elif buffer_D.numel() != sum(self.numels):
            raise ValueError(f"buffer has {buffer_D.numel()} elements, the parameters {sum(self.numels)}")
        else:
            flat = buffer_D
        offset = 0
        for p, n in zip(self.params, self.numels):
            flat[offset : offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset : offset + n].view_as(p)
            offset += n
        # a stage's buffer is a plain view of the whole model's Parameter (which the optimizer holds)
        self.params_D: nn.Parameter = cast(nn.Parameter, flat) if buffer_D is not None else nn.Parameter(flat)

    @property
    def num_params(self) -> int:
        return self.params_D.numel()

    def write_grads(self, grads: tuple[Tensor, ...], out_D: Tensor) -> None:
        """Write per-parameter gradients into the flat row ``out_D`` (no intermediate copy)."""
        torch.cat([g.reshape(-1) for g in grads], out=out_D)

    def unflatten(self, vec_D: Tensor) -> dict[str, Tensor]:
        """Views of a flat vector shaped like the named parameters."""
        out, offset = {}, 0
        for name, n, shape in zip(self.names, self.numels, self.shapes):
            out[name] = vec_D[offset : offset + n].view(shape)
            offset += n
        return out

    def load_flat(self, vec_D: Tensor) -> None:
        with torch.no_grad():
            self.params_D.copy_(vec_D)
