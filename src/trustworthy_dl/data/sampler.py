"""Deterministic mini-batches keyed by (shard, round), so shards can move between nodes.

A shard is one node's initial part of the training set (:func:`partition_indices`). When the
scheduler moves a shard to another node, the new owner draws exactly the batches the old one
would have drawn: :meth:`ShardSampler.batch` is a pure function of (seed, shard_id, round).

Epochs: an epoch is one pass over the data, with the longest shard setting the pace, so
``rounds_per_epoch = ceil(max shard length / batch_size)`` and every sample of every shard is
seen at least once per epoch. Within an epoch a shard is walked along a permutation drawn from a
generator seeded by (seed, epoch, shard_id, lap); a shard shorter than ``rounds_per_epoch *
batch_size`` wraps around into a fresh permutation (lap 1, 2, ...), so every round yields a full
batch. A batch that straddles two laps may repeat a sample of a short shard.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

from trustworthy_dl.errors import DataError

__all__ = ["ShardSampler", "derive_seed"]

_INDEPENDENT = 0x1DE9  # keys the independent-batch stream apart from the epoch permutations


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. seed, epoch, shard), via numpy SeedSequence."""
    words = [w for k in keys for w in (abs(int(k)), int(k < 0))]
    lo, hi = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


class ShardSampler:
    """Batches of dataset indices for each shard and round (see the module docstring).

    Args:
        shards: one int64 index tensor per shard (non-empty).
        batch_size: indices per batch.
        seed: run seed; the batches depend only on (seed, shard_id, round).
    """

    def __init__(self, shards: list[torch.Tensor], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not shards:
            raise DataError("ShardSampler needs at least one shard")
        empty = [i for i, s in enumerate(shards) if s.numel() == 0]
        if empty:
            raise DataError(f"shards {empty} are empty; every shard needs at least one sample")
        self.shards = [s.reshape(-1).to(torch.int64) for s in shards]
        self.batch_size = batch_size
        self.seed = seed
        self.rounds_per_epoch = math.ceil(max(len(s) for s in self.shards) / batch_size)
        self._cache: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._cache_size = 4 * len(self.shards) + 8

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def shard_sizes(self) -> list[int]:
        return [len(s) for s in self.shards]

    def epoch_of(self, round: int) -> int:
        """The epoch (0-based) that ``round`` belongs to."""
        return round // self.rounds_per_epoch

    def batch(self, shard_id: int, round: int) -> torch.Tensor:
        """The ``batch_size`` dataset indices shard ``shard_id`` contributes in ``round``."""
        self._check(shard_id, round)
        epoch, r = divmod(round, self.rounds_per_epoch)
        n = len(self.shards[shard_id])
        pos, end = r * self.batch_size, (r + 1) * self.batch_size
        pieces = []
        while pos < end:
            lap, off = divmod(pos, n)
            take = min(n - off, end - pos)
            pieces.append(self._perm(epoch, shard_id, lap)[off : off + take])
            pos += take
        return self.shards[shard_id][torch.cat(pieces)]

    def independent_batch(self, shard_id: int, round: int) -> torch.Tensor:
        """``batch_size`` indices of shard ``shard_id`` (without replacement, or the whole shard
        when it is smaller) drawn independently of the shard's own batches: a second,
        independent subsample of the shard in ``round``, for a node that computes on a shard
        another node also holds (a quarantined node on probation). Depends only on (seed,
        shard_id, round)."""
        self._check(shard_id, round)
        n = len(self.shards[shard_id])
        g = torch.Generator().manual_seed(derive_seed(self.seed, _INDEPENDENT, shard_id, round))
        return self.shards[shard_id][torch.randperm(n, generator=g)[: min(self.batch_size, n)]]

    def _check(self, shard_id: int, round: int) -> None:
        if not 0 <= shard_id < len(self.shards):
            raise IndexError(f"shard_id {shard_id} out of range for {len(self.shards)} shards")
        if round < 0:
            raise ValueError(f"round must be >= 0, got {round}")

    def _perm(self, epoch: int, shard_id: int, lap: int) -> torch.Tensor:
        # Memoised only to save time: the value is a pure function of the key.
        key = (epoch, shard_id, lap)
        perm = self._cache.get(key)
        if perm is None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, shard_id, lap))
            perm = torch.randperm(len(self.shards[shard_id]), generator=g)
            self._cache[key] = perm
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return perm
