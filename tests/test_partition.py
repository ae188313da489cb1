"""Partitioning samples over nodes and the per-shard batch sampler."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trustworthy_dl.config import DataConfig
from trustworthy_dl.data import load_dataset
from trustworthy_dl.data.partition import SCHEMES, label_histogram, partition_bundle, partition_indices
from trustworthy_dl.data.sampler import ShardSampler, derive_seed
from trustworthy_dl.errors import ConfigError, DataError


def _labels(n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, num_classes, n))


def _assert_disjoint_cover(parts: list[torch.Tensor], n: int, num_parts: int) -> None:
    assert len(parts) == num_parts
    assert all(p.dtype == torch.int64 and p.ndim == 1 and len(p) > 0 for p in parts)
    assert all(torch.equal(p, p.sort().values) for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(n))


def _skew(parts: list[torch.Tensor], labels: torch.Tensor, num_classes: int) -> float:
    """Mean total-variation distance between each part's label distribution and the global one."""
    hist = label_histogram(parts, labels, num_classes).double()
    local = hist / hist.sum(1, keepdim=True)
    glob = hist.sum(0) / hist.sum()
    return float(0.5 * (local - glob).abs().sum(1).mean())


# --------------------------------------------------------------------------- partition


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    num_parts=st.integers(1, 20),
    scheme=st.sampled_from(SCHEMES),
    num_classes=st.integers(1, 10),
    alpha=st.floats(0.01, 100),
    shards_per_node=st.integers(1, 4),
    seed=st.integers(-5, 2**40),
)
def test_every_sample_in_exactly_one_part(
    n: int, num_parts: int, scheme: str, num_classes: int, alpha: float, shards_per_node: int, seed: int
) -> None:
    assume(num_parts <= n and (scheme != "shards" or num_parts * shards_per_node <= n))
    labels = _labels(n, num_classes, seed=n)
    kw = {
        "scheme": scheme,
        "labels": labels,
        "alpha": alpha,
        "shards_per_node": shards_per_node,
        "seed": seed,
    }
    parts = partition_indices(n, num_parts, **kw)  # type: ignore[arg-type]
    _assert_disjoint_cover(parts, n, num_parts)
    again = partition_indices(n, num_parts, **kw)  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seed_changes_the_split(scheme: str) -> None:
    labels = _labels(500, 10)
    a = partition_indices(500, 5, scheme=scheme, labels=labels, seed=0)
    b = partition_indices(500, 5, scheme=scheme, labels=labels, seed=1)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


def test_iid_parts_are_balanced() -> None:
    parts = partition_indices(103, 10, scheme="iid")
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = _labels(3000, 10)
    iid = partition_indices(3000, 10, scheme="iid", labels=labels, seed=3)
    skewed = partition_indices(3000, 10, scheme="dirichlet", labels=labels, alpha=0.1, seed=3)
    flat = partition_indices(3000, 10, scheme="dirichlet", labels=labels, alpha=1000.0, seed=3)
    assert _skew(iid, labels, 10) < 0.15
    assert _skew(flat, labels, 10) < 0.15
    assert _skew(skewed, labels, 10) > 0.5
    # Small alpha: a typical part is dominated by few classes.
    hist = label_histogram(skewed, labels, 10)
    assert float((hist.max(1).values / hist.sum(1)).median()) > 0.4


def test_dirichlet_tiny_alpha_still_fills_every_part() -> None:
    labels = _labels(40, 2)
    for seed in range(20):
        parts = partition_indices(40, 30, scheme="dirichlet", labels=labels, alpha=0.01, seed=seed)
        _assert_disjoint_cover(parts, 40, 30)


def test_shards_give_each_part_few_labels() -> None:
    labels = torch.arange(10).repeat_interleave(200)[
        torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    ]
    parts = partition_indices(2000, 10, scheme="shards", labels=labels, shards_per_node=2, seed=0)
    hist = label_histogram(parts, labels, 10)
    assert ((hist > 0).sum(1) <= 2).all()
    assert all(len(p) == 200 for p in parts)


def test_text_partitions_without_labels() -> None:
    iid = partition_indices(100, 4, scheme="iid", labels=None)
    _assert_disjoint_cover(iid, 100, 4)
    parts = partition_indices(100, 4, scheme="shards", labels=None, shards_per_node=1, seed=7)
    _assert_disjoint_cover(parts, 100, 4)
    for p in parts:  # contiguous stretches of the corpus
        assert torch.equal(p, torch.arange(int(p[0]), int(p[0]) + len(p)))
    with pytest.raises(ConfigError, match="needs class labels"):
        partition_indices(100, 4, scheme="dirichlet", labels=None)


def test_partition_errors() -> None:
    with pytest.raises(DataError, match="cannot split 3 samples over 5 nodes"):
        partition_indices(3, 5, scheme="iid")
    with pytest.raises(ConfigError, match="valid: iid, dirichlet, shards"):
        partition_indices(10, 2, scheme="random")
    with pytest.raises(DataError, match=r"2 \* 3 = 6 <= 5"):
        partition_indices(5, 2, scheme="shards", shards_per_node=3)
    with pytest.raises(DataError, match="shape"):
        partition_indices(10, 2, scheme="dirichlet", labels=torch.zeros(9, dtype=torch.int64))


def test_partition_bundle_follows_the_config() -> None:
    cfg = DataConfig(name="digits", partition="shards", shards_per_node=1)
    bundle = load_dataset(cfg)
    parts = partition_bundle(bundle, 10, cfg, seed=0)
    _assert_disjoint_cover(parts, len(bundle.y_train), 10)
    hist = label_histogram(parts, bundle.y_train, 10)
    # One label-sorted shard of ~144 samples over classes of ~144: one to three classes.
    classes = (hist > 0).sum(1)
    assert (classes <= 3).all() and classes.double().mean() <= 2


# --------------------------------------------------------------------------- sampler


def _shards(sizes: list[int]) -> list[torch.Tensor]:
    start, out = 0, []
    for s in sizes:
        out.append(torch.arange(start, start + s))
        start += s
    return out


def test_rounds_per_epoch_and_epoch_of() -> None:
    s = ShardSampler(_shards([10, 25, 7]), batch_size=4, seed=0)
    assert s.rounds_per_epoch == 7 and s.num_shards == 3 and s.shard_sizes == [10, 25, 7]
    assert [s.epoch_of(r) for r in (0, 6, 7, 13, 14)] == [0, 0, 1, 1, 2]


def test_batches_are_pure_and_order_independent() -> None:
    shards = _shards([13, 30, 5])
    keys = [(i, r) for i in range(3) for r in range(25)]
    a = ShardSampler(shards, batch_size=6, seed=11)
    forward = {k: a.batch(*k) for k in keys}
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    b = ShardSampler(shards, batch_size=6, seed=11)
    assert all(torch.equal(b.batch(*k), forward[k]) for k in shuffled)
    assert all(torch.equal(a.batch(*k), forward[k]) for k in keys)  # a's cache changes nothing
    c = ShardSampler(shards, batch_size=6, seed=12)
    assert any(not torch.equal(c.batch(*k), forward[k]) for k in keys)


def test_epochs_reshuffle() -> None:
    s = ShardSampler(_shards([40]), batch_size=8, seed=0)
    e0 = torch.cat([s.batch(0, r) for r in range(5)])
    e1 = torch.cat([s.batch(0, r) for r in range(5, 10)])
    assert torch.equal(e0.sort().values, torch.arange(40)) and torch.equal(e1.sort().values, torch.arange(40))
    assert not torch.equal(e0, e1)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=5),
    batch_size=st.integers(1, 16),
    seed=st.integers(-3, 2**40),
    epoch=st.integers(0, 3),
)
def test_full_epoch_covers_every_shard(sizes: list[int], batch_size: int, seed: int, epoch: int) -> None:
    shards = _shards(sizes)
    s = ShardSampler(shards, batch_size=batch_size, seed=seed)
    assert s.rounds_per_epoch == math.ceil(max(sizes) / batch_size)
    rounds = range(epoch * s.rounds_per_epoch, (epoch + 1) * s.rounds_per_epoch)
    for i, shard in enumerate(shards):
        batches = [s.batch(i, r) for r in rounds]
        assert all(b.shape == (batch_size,) and b.dtype == torch.int64 for b in batches)
        seen = torch.cat(batches)
        assert set(seen.tolist()) == set(shard.tolist())  # every sample, nothing from other shards
        # Within one lap of the permutation no sample repeats.
        first_lap = seen[: len(shard)]
        assert len(set(first_lap.tolist())) == len(shard)


def test_sampler_errors() -> None:
    with pytest.raises(DataError, match="empty"):
        ShardSampler([torch.arange(3), torch.empty(0, dtype=torch.int64)], batch_size=2, seed=0)
    with pytest.raises(DataError, match="batch_size"):
        ShardSampler(_shards([3]), batch_size=0, seed=0)
    s = ShardSampler(_shards([3]), batch_size=2, seed=0)
    with pytest.raises(IndexError):
        s.batch(1, 0)
    with pytest.raises(ValueError, match="round"):
        s.batch(0, -1)


def test_derive_seed_separates_keys() -> None:
    seeds = {derive_seed(s, e, i) for s in (-1, 0, 1) for e in range(4) for i in range(4)}
    assert len(seeds) == 48 and all(0 <= x < 2**63 for x in seeds)
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
