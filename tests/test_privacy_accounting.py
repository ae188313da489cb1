"""What the privacy guarantee covers: one sample counts once per batch, every node's batches are
accounted, a shard released without noise has no guarantee, BatchNorm never carries raw data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from test_privacy import _cfg as privacy_cfg
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models import get_model
from trustworthy_dl.privacy import PerSampleClipper, ShardAccountant
from trustworthy_dl.privacy.per_sample import first_copies


def _cfg(out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    """test_privacy's config (digits, MLP, DP-SGD sigma 1), smaller: 4 nodes, 4 rounds."""
    extra = {"distributed": {"num_nodes": 4}, "training": {"max_rounds": 4, "eval_every": 4}, **extra}
    return privacy_cfg(out, **extra)


def test_first_copies_marks_each_input_label_pair_once() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([0, 1, 0, 5, 1])  # row 3: same input, other label: a different sample
    assert first_copies(x, y).tolist() == [True, True, False, True, False]
    assert first_copies(x[:0], y[:0]).tolist() == []


def test_a_sample_repeated_in_a_batch_moves_the_clipped_sum_by_at_most_c() -> None:
    torch.manual_seed(0)
    flat = FlatModel(get_model("mlp", num_classes=10, in_channels=1, image_size=8))
    clipper = PerSampleClipper(flat, Task("image"), clip_norm=0.05, chunk=3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    rep_x, rep_y = x[[0, 1, 0, 2, 0, 3]], y[[0, 1, 0, 2, 0, 3]]  # sample 0 three times
    once, thrice = torch.empty(flat.num_params), torch.empty(flat.num_params)
    clipper.clipped_sum(x, y, once)
    clipper.clipped_sum(rep_x, rep_y, thrice)
    torch.testing.assert_close(thrice, once, rtol=1e-5, atol=1e-7)
    rows = torch.empty(2, flat.num_params)
    clipper.clipped_sums([rep_x, x], [rep_y, y], rows)  # the batched path, chunks across batches
    torch.testing.assert_close(rows[0], once, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rows[1], once, rtol=1e-5, atol=1e-7)


def test_node_clip_refuses_batchnorm(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, model={"name": "cnn", "norm": "batch"}, privacy={"mode": "node_clip"})
    with pytest.raises(ConfigError, match="running mean"):
        run_experiment(cfg, write=False)


def test_exposed_shard_has_no_guarantee_and_survives_a_resume() -> None:
    acc = ShardAccountant([0.1, 0.1], 1.0, "rdp", 1e-5)
    acc.step(0, 5)
    acc.step(1, 5)
    finite = acc.epsilon()
    assert 0 < finite < math.inf
    acc.expose(1)
    assert acc.epsilon() == math.inf and acc.per_shard()[0] == finite and acc.per_shard()[1] == math.inf
    again = ShardAccountant([0.1, 0.1], 1.0, "rdp", 1e-5)
    again.load_state_dict(acc.state_dict())
    assert again.per_shard() == acc.per_shard()


def test_byzantine_nodes_batches_are_accounted(tmp_path: Path) -> None:
    res = run_experiment(_cfg(tmp_path, attack={"name": "sign_flip", "num_byzantine": 1}), write=False)
    per_shard = res.summary["privacy"]["epsilon_per_shard"]
    # a coordinator cannot tell who is Byzantine: the Byzantine node's shard is accounted too
    assert len(per_shard) == 4 and all(e > 0 for e in per_shard)


def test_a_probation_batch_is_an_independent_subsample(tmp_path: Path) -> None:
    """A quarantined node computes on its home shard while a trusted holder trains on it: its
    batch must be drawn independently of the holder's (the accountant charges two independent
    subsampled steps), not be the holder's next batch (every sample released twice)."""
    from trustworthy_dl.engine.setup import build_experiment

    exp = build_experiment(_cfg(tmp_path, training={"max_rounds": 40, "batch_size": 8}))
    assert exp.scheduler.home_shards(1) == [1]
    shard_idx = set(exp.sampler.shards[1].tolist())
    draws = set()
    for r in range(40):
        idx = exp.sampler.independent_batch(1, r)
        assert len(set(idx.tolist())) == len(idx) == 8 and set(idx.tolist()) <= shard_idx
        assert torch.equal(idx, exp.sampler.independent_batch(1, r))  # the verifier re-draws it
        for k in (r, r + 1):  # neither the holder's batch of this round nor of the next
            assert not torch.equal(idx.sort().values, exp.sampler.batch(1, k).sort().values)
        x_p, y_p = exp.batch(1, r, [])  # node 1 holds nothing: on probation
        assert torch.equal(x_p, exp.data.x_train[idx])
        assert torch.equal(y_p, exp.data.y_train[idx])
        draws.add(tuple(idx.tolist()))
    assert len(draws) == 40  # a fresh subsample every round


def test_a_shard_with_probation_steps_is_reported_over_the_target(tmp_path: Path) -> None:
    """sigma is calibrated for one step per shard and round: the quarantined node's home shard,
    also computed on by the node on probation, ends above target_epsilon, and the summary says so."""
    cfg = _cfg(
        tmp_path,
        training={"max_rounds": 10, "eval_every": 10},
        attack={"name": "sign_flip", "byzantine_ids": [3]},
        security={"attack_detection": True, "gradient_verification": True},
        privacy={"target_epsilon": 4.0, "accountant": "rdp"},
    )
    priv = run_experiment(cfg, write=False).summary["privacy"]
    assert priv["target_exceeded"] is True and priv["shards_over_target"] == [3]
    assert priv["epsilon_per_shard"][3] > 4.0 >= max(priv["epsilon_per_shard"][:3])
