"""Per-node gradients written straight into rows of a preallocated (N, D) matrix.

Modes (``distributed.per_node_grads``):

* ``loop``: one forward/backward per node on its own batch. On this 2-core CPU it costs about
  the same as one step on the whole N*b batch (small per-node batches stay in cache), so it is
  the default.
* ``vmap``: ``torch.func.vmap(grad(...))`` over the stacked node batches (one batched kernel per
  layer; suits a GPU). Needs equal batch sizes and no batch statistics (GroupNorm).
* ``compile_vmap``: the same under ``torch.compile`` (fastest per step, ~20 s to compile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError

__all__ = ["NodeComputer"]

Batch = tuple[Tensor, Tensor]


class NodeComputer:
    """Computes each node's gradient on its batch into a row of ``out_RD``."""

    def __init__(self, flat: FlatModel, task: Task, *, mode: str = "loop") -> None:
        if mode not in ("loop", "vmap", "compile_vmap"):
            raise ConfigError(f"distributed.per_node_grads must be loop | vmap | compile_vmap, got {mode!r}")
        if mode != "loop" and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in flat.model.modules()
        ):
            raise ConfigError(
                f"distributed.per_node_grads={mode!r} cannot run BatchNorm (batch statistics under vmap); "
                "use model.norm=group or per_node_grads=loop"
            )
        self.flat, self.task, self.mode = flat, task, mode
        self._vmapped: Callable[..., tuple[dict[str, Tensor], Tensor]] | None = None

    def compute(self, batches: Sequence[Batch], out_RD: Tensor) -> Tensor:
        """Fill ``out_RD[i]`` with the gradient of node i's batch loss; returns the losses (R,)."""
        if len(batches) != out_RD.shape[0]:
            raise ValueError(f"{len(batches)} batches for {out_RD.shape[0]} rows")
        if not batches:
            return torch.zeros(0)
        same_shape = all(b[0].shape == batches[0][0].shape for b in batches)
        if self.mode != "loop" and same_shape:
            return self._compute_vmap(batches, out_RD)
        return self._compute_loop(batches, out_RD)

    def gradient(self, x: Tensor, y: Tensor) -> tuple[Tensor, float]:
        """One node's flat gradient (a fresh tensor) and loss: used to re-compute a node's work."""
        out = torch.empty(
            1, self.flat.num_params, dtype=self.flat.params_D.dtype, device=self.flat.params_D.device
        )
        loss = self._compute_loop([(x, y)], out)
        return out[0], float(loss[0])

    def _compute_loop(self, batches: Sequence[Batch], out_RD: Tensor) -> Tensor:
        model, params = self.flat.model, self.flat.params
        losses = torch.empty(len(batches))
        for i, (x, y) in enumerate(batches):
            loss = self.task.loss(model(x), y)
            grads = torch.autograd.grad(loss, params)
            self.flat.write_grads(grads, out_RD[i])
            losses[i] = loss.detach()
        return losses

    def _build_vmapped(self) -> Callable[..., tuple[dict[str, Tensor], Tensor]]:
        model, task = self.flat.model, self.task

        def loss_fn(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return task.loss(functional_call(model, params, (x,)), y)

        fn = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
        if self.mode == "compile_vmap":
            fn = torch.compile(fn)
        return fn

    def _compute_vmap(self, batches: Sequence[Batch], out_RD: Tensor) -> Tensor:
        if self._vmapped is None:
            self._vmapped = self._build_vmapped()
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        params = {n: p.detach() for n, p in zip(self.flat.names, self.flat.params)}
        grads, losses = self._vmapped(params, x, y)
        r = out_RD.shape[0]
        torch.cat([grads[n].reshape(r, -1) for n in self.flat.names], dim=1, out=out_RD)
        return losses.detach().cpu()
