"""What a node does to its update before it leaves the node: clip, add noise, sparsify.

``NodePrivacy.update(node, round, x, y, out_D)`` replaces the node's plain gradient computation:

* ``dp_sgd``: ``(sum_i clip(g_i, C) + N(0, sigma^2 C^2 I)) / B`` over the node's B samples;
* ``node_clip``: ``clip(mean_i g_i, C) + N(0, sigma^2 C^2 I)``, one backward pass (cheaper; see
  accountant.py for what it guarantees);
* ``none``: the plain gradient (sparsification only);

then top-k / random-k with error feedback when configured (noise first: see sparsify.py). It
runs where the node runs: in its own process under ``torchrun``. Byzantine nodes do not run it
(an attacker adds no noise; the engine gives them the plain gradient to corrupt).

``replay`` gives the verifier the same update: the noise and random-k generators are keyed by
(seed, node, round) (noise.py). Error-feedback memory cannot be replayed by a verifier (it holds
the node's past gradients), so error feedback with gradient verification is refused at set-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.config_privacy import PrivacyConfig
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.privacy.noise import add_noise_, node_generator
from trustworthy_dl.privacy.per_sample import PerSampleClipper, clip_rows_
from trustworthy_dl.privacy.sparsify import Sparsifier

__all__ = ["NodePrivacy"]


class NodePrivacy:
    """The node-side mechanism of one run.

    Args:
        cfg: the ``privacy`` section.
        flat: the model behind its flat parameter vector.
        task: the loss.
        noise_multiplier: sigma actually used (the configured one, or the one chosen for
            ``target_epsilon``).
        seed: the run seed (keys the replayable generators).
    """

    def __init__(
        self, cfg: PrivacyConfig, flat: FlatModel, task: Task, *, noise_multiplier: float, seed: int
    ) -> None:
        self.cfg, self.flat, self.task, self.seed = cfg, flat, task, int(seed)
        self.mode, self.clip_norm = cfg.mode, float(cfg.clip_norm)
        self.sigma = float(noise_multiplier) if cfg.mode != "none" else 0.0
        self.clipper = (
            PerSampleClipper(flat, task, clip_norm=self.clip_norm) if cfg.mode == "dp_sgd" else None
        )
        sp = cfg.sparsify
        self.sparsifier = (
            Sparsifier(sp.kind, sp.ratio, error_feedback=sp.error_feedback) if sp.kind != "none" else None
        )
        self.unit_batch: int | None = None  # dp_sgd noise is sigma C / unit_batch (see noise_std)
        self.clipped_fraction = 0.0  # dp_sgd: share of the last round's samples whose gradient was clipped

    def noise_std(self, batch_size: int) -> float:
        """The std of the noise on each coordinate of the update the node sends.

        dp_sgd: sigma * C / b with b = ``unit_batch`` (the per-shard batch, set by the engine) when
        given, else the batch's own size. A node holding k shards averages k * b samples but still
        adds the noise of one shard's batch: its row looks like every other row to stage-1
        statistics (with sigma C / (k b) the holders of moved shards stood out every round), and
        its guarantee is stronger than the one accounted (multiplier k * sigma against sigma).
        """
        if self.mode == "dp_sgd":
            return self.sigma * self.clip_norm / max(self.unit_batch or batch_size, 1)
        return self.sigma * self.clip_norm

    def _clean(self, x: Tensor, y: Tensor, out_D: Tensor) -> float:
        """The clipped (not yet noised) update of the batch into ``out_D``; returns the mean loss."""
        if self.clipper is not None:
            loss, self.clipped_fraction = self.clipper.clipped_sum(x, y, out_D)
            out_D.div_(max(x.shape[0], 1))
            return loss
        model = self.flat.model
        loss_t = self.task.loss(model(x), y)
        self.flat.write_grads(torch.autograd.grad(loss_t, self.flat.params), out_D)
        if self.mode == "node_clip":
            norm = float(clip_rows_(out_D.unsqueeze(0), self.clip_norm)[0])
            self.clipped_fraction = float(norm > self.clip_norm)
        return float(loss_t.detach())

    def _private(self, node: int, round: int, x: Tensor, y: Tensor, out_D: Tensor, *, memory: bool) -> float:
        loss = self._clean(x, y, out_D)
        self._release(node, round, x.shape[0], out_D, memory=memory)
        return loss

    def _release(self, node: int, round: int, batch: int, out_D: Tensor, *, memory: bool) -> None:
        """Noise, then sparsification, of the clipped update in ``out_D``."""
        dev = out_D.device
        add_noise_(out_D, self.noise_std(batch), node_generator(self.seed, node, round, "noise", dev))
        if self.sparsifier is not None:
            gen = (
                node_generator(self.seed, node, round, "randk", dev)
                if self.sparsifier.kind == "randk"
                else None
            )
            if memory:
                self.sparsifier.apply_(node, out_D, gen)
            else:  # a verifier's replay: the same selection, no memory (none exists without error feedback)
                saved = self.sparsifier.memory
                self.sparsifier.memory = {}
                try:
                    self.sparsifier.apply_(node, out_D, gen)
                finally:
                    self.sparsifier.memory = saved

    def update(self, node: int, round: int, x: Tensor, y: Tensor, out_D: Tensor) -> float:
        """Write the private update of ``node``'s batch into ``out_D``; returns the batch's mean loss."""
        return self._private(node, round, x, y, out_D, memory=True)

    def update_many(
        self, nodes: Sequence[int], round: int, batches: Sequence[tuple[Tensor, Tensor]], out_RD: Tensor
    ) -> Tensor:
        """``update`` for several nodes of one process, row i of ``out_RD`` for ``nodes[i]``; dp_sgd
        runs all their samples through shared vmap chunks. Returns the mean losses (R,)."""
        if self.clipper is None or len({b[0].shape[1:] for b in batches}) > 1:
            return torch.tensor(
                [self.update(n, round, x, y, out_RD[i]) for i, (n, (x, y)) in enumerate(zip(nodes, batches))]
            )
        losses, self.clipped_fraction = self.clipper.clipped_sums(
            [b[0] for b in batches], [b[1] for b in batches], out_RD
        )
        for i, (node, (x, _)) in enumerate(zip(nodes, batches)):
            out_RD[i].div_(max(x.shape[0], 1))
            self._release(node, round, x.shape[0], out_RD[i], memory=True)
        return losses

    def replay(self, node: int, round: int, x: Tensor, y: Tensor) -> Tensor:
        """What an honest ``node`` sent in ``round`` (for the verifier): a fresh tensor."""
        out = torch.empty(
            self.flat.num_params, dtype=self.flat.params_D.dtype, device=self.flat.params_D.device
        )
        self._private(node, round, x, y, out, memory=False)
        return out

    def bytes_per_update(self) -> int:
        d, size = self.flat.num_params, self.flat.params_D.element_size()
        return self.sparsifier.bytes_per_update(d, size) if self.sparsifier is not None else d * size

    def state_dict(self) -> dict[str, Any]:
        return {"sparsify_memory": self.sparsifier.state_dict() if self.sparsifier is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state.get("sparsify_memory", {}), self.flat.params_D.device)
