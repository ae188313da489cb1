"""Split a dataset's sample indices over nodes: iid, Dirichlet label skew, or label shards.

- ``iid``: a random permutation cut into equal parts (sizes differ by at most one).
- ``dirichlet``: label skew of Hsu, Qi & Brown 2019 ("Measuring the effects of non-identical data
  distribution for federated visual classification"): for each class, the fractions that go to
  each part are drawn from Dirichlet(alpha). Small alpha (0.1) gives each part few classes; large
  alpha (100) approaches iid. A part left empty takes one sample from the largest part, so every
  part has at least one sample.
- ``shards``: the pathological non-iid split of McMahan et al. 2017 (FedAvg): sort by label, cut
  into ``num_parts * shards_per_node`` equal shards, give each part ``shards_per_node`` random
  shards, so a part sees at most ``shards_per_node`` classes (plus boundary shards).

Without labels (text), ``iid`` and ``shards`` work (shards are then contiguous stretches of the
corpus in its natural order); ``dirichlet`` is an error. Every sample lands in exactly one part,
each part's indices are sorted, and the result depends only on the arguments (seeded generators).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from trustworthy_dl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig
    from trustworthy_dl.data.registry import DatasetBundle

__all__ = ["SCHEMES", "label_histogram", "partition_bundle", "partition_indices"]

SCHEMES = ("iid", "dirichlet", "shards")


def partition_indices(
    num_samples: int,
    num_parts: int,
    *,
    scheme: str,
    labels: torch.Tensor | np.ndarray | None = None,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Split ``range(num_samples)`` into ``num_parts`` disjoint, non-empty index sets.

    Args:
        num_samples: dataset size n.
        num_parts: number of parts (nodes); must be <= n.
        scheme: ``iid`` | ``dirichlet`` | ``shards`` (see the module docstring).
        labels: int class labels (n,); required by ``dirichlet``, used by ``shards``.
        alpha: Dirichlet concentration (> 0).
        shards_per_node: shards per part for ``shards``.
        seed: the split depends only on the arguments and this seed.

    Returns:
        ``num_parts`` sorted int64 tensors that together hold each index exactly once.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if num_parts < 1:
        raise ConfigError(f"num_parts must be >= 1, got {num_parts}")
    if num_parts > num_samples:
        raise DataError(
            f"cannot split {num_samples} samples over {num_parts} nodes: every node needs at least "
            "one sample; use fewer nodes or more data (data.max_train_samples)"
        )
    y = _check_labels(labels, num_samples)
    rng = np.random.default_rng(_seed_key(seed))
    if scheme == "iid":
        parts = np.array_split(rng.permutation(num_samples), num_parts)
    elif scheme == "dirichlet":
        if y is None:
            raise ConfigError(
                "data.partition=dirichlet is label skew and needs class labels, but this dataset has "
                "none (text); use data.partition=iid or shards"
            )
        if alpha <= 0:
            raise ConfigError(f"data.alpha must be > 0, got {alpha}")
        parts = _dirichlet(y, num_parts, alpha, rng)
    else:
        parts = _shards(y, num_samples, num_parts, shards_per_node, rng)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def _seed_key(seed: int) -> list[int]:
    # SeedSequence wants non-negative ints; keep the sign as a separate word so -1 != 1.
    return [abs(seed), int(seed < 0)]


def _check_labels(labels: torch.Tensor | np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (n,):
        raise DataError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise DataError(f"labels must be non-negative integers, got dtype {y.dtype}, min {y.min()}")
    return y.astype(np.int64)


def _dirichlet(y: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        p = rng.dirichlet(np.full(num_parts, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for part, piece in zip(chunks, np.split(idx, cuts)):
            part.append(piece)
    parts = [np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks]
    # Rebalance deterministically: an empty part takes a random sample of the largest part.
    for i in range(num_parts):
        if len(parts[i]) == 0:
            j = int(np.argmax([len(p) for p in parts]))
            k = int(rng.integers(len(parts[j])))
            parts[i] = parts[j][k : k + 1]
            parts[j] = np.delete(parts[j], k)
    return parts


def _shards(
    y: np.ndarray | None, n: int, num_parts: int, shards_per_node: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if shards_per_node < 1:
        raise ConfigError(f"data.shards_per_node must be >= 1, got {shards_per_node}")
    num_shards = num_parts * shards_per_node
    if num_shards > n:
        raise DataError(
            f"partition=shards needs num_nodes * shards_per_node = {num_parts} * {shards_per_node} "
            f"= {num_shards} <= {n} samples; lower data.shards_per_node or use more data"
        )
    if y is None:
        order = np.arange(n)  # text: contiguous stretches of the corpus
    else:
        # Shuffle first so the stable label sort orders samples randomly within a class.
        perm = rng.permutation(n)
        order = perm[np.argsort(y[perm], kind="stable")]
    shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards).reshape(num_parts, shards_per_node)
    return [np.concatenate([shards[s] for s in row]) for row in owner]


def label_histogram(parts: list[torch.Tensor], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count of each class in each part: int64 (num_parts, num_classes)."""
    return torch.stack([torch.bincount(labels[p], minlength=num_classes) for p in parts])


def partition_bundle(
    bundle: DatasetBundle, num_parts: int, cfg: DataConfig, *, seed: int
) -> list[torch.Tensor]:
    """Partition ``bundle``'s training set as ``cfg`` (data.partition, alpha, shards_per_node) says."""
    return partition_indices(
        len(bundle.y_train),
        num_parts,
        scheme=cfg.partition,
        labels=bundle.labels,
        alpha=cfg.alpha,
        shards_per_node=cfg.shards_per_node,
        seed=seed,
    )
