"""Per-node memory of the rank features: what one round cannot tell, a few rounds can.

A node that sends -3 x its own noisy gradient (a non-colluding sign flip with batch 10) lands 3-6
robust spreads from the honest blob on the rank features, and in a single round some honest
nodes land as far (README, "Stage-1 detection in MANDERA's setting": at N = 16 a rule fitted
with the labels still confuses them). But the attacker lands there every round, an honest node
only by the chance of its batch. :class:`RankHistory` keeps, per node id, an exponentially
weighted running mean of the node's rank features in robust units (median / 1.4826 MAD across
the round's rows, so that the features' drift during training cancels), and
:func:`~trustworthy_dl.security.mandera.mandera` clusters each round's features together with
these means: the persistent attacker moves away from the blob on both, the unlucky honest node
only on the first.

The decay sets the memory: mean_t = decay x mean_(t-1) + (1 - decay) x z_t, 0.8 by default
(half-life about 3 rounds, so an attack that starts late is remembered within a few rounds and
an honest node's unlucky round is forgotten as fast). A node seen for the first time starts
from its current features. Nodes absent from a round (missing or non-finite row) keep their
mean. The state is per node id and is checkpointed with the security layer; callers whose rows
change owner between rounds (pipeline stage groups, where a row is a replica whose stage can
migrate to another node) keep no history.

Legend: N nodes (rows of the round), F features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RankHistory"]


class RankHistory:
    """Exponentially weighted per-node means of the robust rank features.

    Args:
        decay: weight of the past, in [0, 1): 0 keeps only the current round.
    """

    def __init__(self, decay: float = 0.8) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"history_decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self._mean_KF = torch.zeros(0, 0, dtype=torch.float64)  # row k: node k's mean
        self._seen_K = torch.zeros(0, dtype=torch.bool)

    def bind(self, nodes: Sequence[int]) -> Callable[[Tensor], Tensor | None]:
        """The update for one round whose rows are ``nodes`` (distinct ids, in row order).

        The returned function takes the round's (N, F) features in robust units, folds them
        into the nodes' means and returns the updated means (N, F), or None when none of the
        nodes had a mean before (a first round: nothing to remember yet).
        """
        ids_N = torch.as_tensor(list(nodes), dtype=torch.long).reshape(-1)

        def update(z_NF: Tensor) -> Tensor | None:
            if z_NF.shape[0] != ids_N.numel():
                raise ValueError(f"{z_NF.shape[0]} feature rows for {ids_N.numel()} nodes")
            z_NF = z_NF.detach().to(torch.float64).cpu()
            self._grow(int(ids_N.max()) + 1 if ids_N.numel() else 0, z_NF.shape[1])
            seen_N = self._seen_K[ids_N]
            prev_NF = self._mean_KF[ids_N]
            out_NF = torch.where(seen_N[:, None], self.decay * prev_NF + (1 - self.decay) * z_NF, z_NF)
            self._mean_KF[ids_N] = out_NF
            self._seen_K[ids_N] = True
            return out_NF if bool(seen_N.any()) else None

        return update

    def _grow(self, k: int, f: int) -> None:
        if self._mean_KF.shape[1] != f and not bool(self._seen_K.any()):
            self._mean_KF = torch.zeros(self._mean_KF.shape[0], f, dtype=torch.float64)
        if k > self._seen_K.numel():
            pad = k - self._seen_K.numel()
            self._mean_KF = torch.cat([self._mean_KF, torch.zeros(pad, f, dtype=torch.float64)])
            self._seen_K = torch.cat([self._seen_K, torch.zeros(pad, dtype=torch.bool)])

    def mean(self, node: int) -> Tensor | None:
        """Node ``node``'s running mean (None: never seen)."""
        if node >= self._seen_K.numel() or not bool(self._seen_K[node]):
            return None
        return self._mean_KF[node].clone()

    def __len__(self) -> int:
        """How many nodes have a mean."""
        return int(self._seen_K.sum())

    def state_dict(self) -> dict[str, Any]:
        ids = torch.nonzero(self._seen_K).flatten().tolist()
        return {"decay": self.decay, "mean": {str(i): self._mean_KF[i].tolist() for i in ids}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        means = {int(i): v for i, v in state.get("mean", {}).items()}
        self._mean_KF = torch.zeros(0, 0, dtype=torch.float64)
        self._seen_K = torch.zeros(0, dtype=torch.bool)
        if means:
            self._grow(max(means) + 1, len(next(iter(means.values()))))
            for i, v in means.items():
                self._mean_KF[i] = torch.tensor(v, dtype=torch.float64)
                self._seen_K[i] = True
