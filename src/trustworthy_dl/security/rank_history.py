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

import numpy as np
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
        # row k: node k's mean (numpy: a round's update is a few ops on a few dozen values,
        # ~1 us each in numpy against ~5 us in torch)
        self._mean_KF = np.zeros((0, 0))
        self._seen_K = np.zeros(0, dtype=bool)

    def bind(self, nodes: Sequence[int]) -> Callable[[Tensor], Tensor | None]:
        """The update for one round whose rows are ``nodes`` (distinct ids, in row order).

        The returned function takes the round's (N, F) features in robust units, folds them
        into the nodes' means and returns the updated means (N, F), or None when none of the
        nodes had a mean before (a first round: nothing to remember yet).
        """
        ids_N = np.asarray(list(nodes), dtype=np.int64).reshape(-1)

        def update(z_NF: Tensor) -> Tensor | None:
            if z_NF.shape[0] != ids_N.size:
                raise ValueError(f"{z_NF.shape[0]} feature rows for {ids_N.size} nodes")
            z = z_NF.detach().to(device="cpu", dtype=torch.float64).numpy()
            self._grow(int(ids_N.max()) + 1 if ids_N.size else 0, z.shape[1])
            seen_N = self._seen_K[ids_N]
            out_NF = np.where(seen_N[:, None], self.decay * self._mean_KF[ids_N] + (1 - self.decay) * z, z)
            self._mean_KF[ids_N] = out_NF
            self._seen_K[ids_N] = True
            return torch.from_numpy(out_NF) if seen_N.any() else None

        return update

    def _grow(self, k: int, f: int) -> None:
        if self._mean_KF.shape[1] != f and not self._seen_K.any():
            self._mean_KF = np.zeros((self._mean_KF.shape[0], f))
        if k > self._seen_K.size:
            pad = k - self._seen_K.size
            self._mean_KF = np.concatenate([self._mean_KF, np.zeros((pad, f))])
            self._seen_K = np.concatenate([self._seen_K, np.zeros(pad, dtype=bool)])

    def mean(self, node: int) -> Tensor | None:
        """Node ``node``'s running mean (None: never seen)."""
        if node >= self._seen_K.size or not self._seen_K[node]:
            return None
        return torch.from_numpy(self._mean_KF[node].copy())

    def __len__(self) -> int:
        """How many nodes have a mean."""
        return int(self._seen_K.sum())

    def state_dict(self) -> dict[str, Any]:
        ids = np.flatnonzero(self._seen_K).tolist()
        return {"decay": self.decay, "mean": {str(i): self._mean_KF[i].tolist() for i in ids}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        means = {int(i): v for i, v in state.get("mean", {}).items()}
        self._mean_KF = np.zeros((0, 0))
        self._seen_K = np.zeros(0, dtype=bool)
        if means:
            self._grow(max(means) + 1, len(next(iter(means.values()))))
            for i, v in means.items():
                self._mean_KF[i] = np.asarray(v, dtype=np.float64)
                self._seen_K[i] = True
