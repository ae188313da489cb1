"""Trust scores, quarantine and shard scheduling."""

from __future__ import annotations

import pytest
import torch

from trustworthy_dl.config import config_from_dict
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.trust import ShardScheduler, TrustManager


def ev(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- TrustManager


def test_decay_trajectory_quarantines_at_third_flagged_round():
    tm = TrustManager(2)
    trajectory, events = [], []
    for _ in range(3):
        events.append(tm.update(ev(1.0, 0.0)))
        trajectory.append(tm.scores[0].item())
    assert trajectory == [0.8, 0.7, 0.6]  # exact: scores are rounded to 12 decimals
    assert [e.quarantined for e in events] == [[], [], [0]]
    assert events[2].round == 2
    assert tm.quarantined_N.tolist() == [True, False] and tm.active_N.tolist() == [False, True]
    # the clean node recovers towards 1: 0.9 + 0.05 * 0.1 = 0.905, ...
    assert tm.scores[1].item() == pytest.approx(1 - 0.1 * 0.95**3)


def test_partial_evidence_and_clamping():
    tm = TrustManager(3, initial_trust=0.9, decay_rate=0.5)
    tm.update(ev(0.2, 1.0, 0.0))
    assert tm.scores.tolist() == [0.8, 0.4, 0.905]
    tm.update(ev(0.0, 1.0, 0.0))
    assert tm.scores[1].item() == 0.0  # clamped at 0


def test_recovery_and_reinstatement_needs_margin():
    tm = TrustManager(1)  # threshold 0.7, margin 0.05: back at >= 0.75
    for _ in range(3):
        tm.update(ev(1.0))
    assert tm.quarantined_N.item() and tm.scores.item() == 0.6
    rounds = 0
    while tm.quarantined_N.item():
        s_before = tm.scores.item()
        events = tm.update(ev(0.0))
        rounds += 1
        # probation: a quarantined node keeps being scored
        assert tm.scores.item() == pytest.approx(s_before + 0.05 * (1 - s_before))
        if tm.scores.item() >= 0.7 and tm.scores.item() < 0.75:
            assert tm.quarantined_N.item()  # above threshold but within the margin: still out
    assert events.reinstated == [0]
    assert rounds == 10  # 1 - 0.4 * 0.95**k >= 0.75  <=>  k >= 9.2
    assert tm.quarantine_rounds_N.item() == 1 + 9  # the quarantine round and 9 of probation


def test_weights_state_dict_and_summary():
    tm = TrustManager(4)
    for _ in range(3):
        tm.update(ev(1.0, 0.0, 0.0, 0.5))
    w = tm.weights_N()
    assert w[0] == 0 and w.sum().item() == pytest.approx(1.0)
    assert w[1] == w[2] and w[3] < w[1]
    tm2 = TrustManager(4)
    tm2.load_state_dict(tm.state_dict())
    assert torch.equal(tm2.scores, tm.scores) and torch.equal(tm2.quarantined_N, tm.quarantined_N)
    assert tm2.round == 3
    e1, e2 = tm.update(ev(1.0, 1.0, 0.0, 0.0)), tm2.update(ev(1.0, 1.0, 0.0, 0.0))
    assert e1 == e2 and torch.equal(tm.scores, tm2.scores)
    s = tm.summary()
    assert s["quarantined"] == [0] and s["quarantine_rounds"][0] == 2 and len(s["final_scores"]) == 4
    all_out = TrustManager(1)
    for _ in range(3):
        all_out.update(ev(1.0))
    assert all_out.weights_N().tolist() == [0.0]


def test_validation_names_the_value():
    with pytest.raises(ConfigError, match=r"decay_rate must be in \[0, 1\], got 1\.5"):
        TrustManager(3, decay_rate=1.5)
    with pytest.raises(ConfigError, match=r"initial_trust=0\.5 is below threshold=0\.7"):
        TrustManager(3, initial_trust=0.5)
    with pytest.raises(ConfigError, match="never be reinstated"):
        TrustManager(3, threshold=0.99, reinstate_margin=0.05)
    tm = TrustManager(2)
    with pytest.raises(ValueError, match="expected 2"):
        tm.update(ev(1.0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        tm.update(ev(1.5, 0.0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        tm.update(ev(float("nan"), 0.0))


def test_from_config():
    cfg = config_from_dict({"security": {"trust_threshold": 0.6}, "trust": {"decay_rate": 0.2}})
    tm = TrustManager.from_config(5, cfg)
    assert (tm.threshold, tm.decay_rate, tm.initial_trust) == (0.6, 0.2, 0.9)


# ----------------------------------------------------------------------------- ShardScheduler


def mask(n: int, *inactive: int) -> torch.Tensor:
    m = torch.ones(n, dtype=torch.bool)
    m[list(inactive)] = False
    return m


def assert_complete(s: ShardScheduler) -> None:
    held = sorted(x for shards in s.assignment() for x in shards)
    assert held == list(range(s.num_shards))


def test_initial_assignment():
    assert ShardScheduler(3).assignment() == [[0], [1], [2]]
    assert ShardScheduler(2, num_shards=5).assignment() == [[0, 2, 4], [1, 3]]
    assert ShardScheduler(4, num_shards=2).assignment() == [[0], [1], [], []]  # spares


def test_moves_to_least_loaded_and_returns_home():
    s = ShardScheduler(4)
    events = s.reassign(mask(4, 1, 2), round_idx=5)
    # shard 1 -> node 0 (load 1, lowest id), then shard 2 -> node 3 (node 0 now has 2)
    assert [(e.shard, e.from_node, e.to_node, e.reason, e.round) for e in events] == [
        (1, 1, 0, "inactive", 5),
        (2, 2, 3, "inactive", 5),
    ]
    assert s.assignment() == [[0, 1], [], [], [2, 3]]
    assert s.home_shards(1) == [1] and s.holder_of(1) == 0
    assert all(e.seconds >= 0 for e in events)
    assert s.reassign(mask(4, 1, 2)) == []  # stable: nothing more to move
    back = s.reassign(mask(4, 2))
    assert [(e.shard, e.from_node, e.to_node, e.reason) for e in back] == [(1, 0, 1, "return")]
    assert s.assignment() == [[0], [1], [], [2, 3]]
    s.reassign(mask(4))
    assert s.assignment() == [[0], [1], [2], [3]]


def test_never_drops_a_shard_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    a, b = ShardScheduler(6, num_shards=9), ShardScheduler(6, num_shards=9)
    for r in range(200):
        active = torch.rand(6, generator=g) > 0.4
        ea, eb = a.reassign(active, round_idx=r), b.reassign(active, round_idx=r)
        assert [(e.shard, e.to_node) for e in ea] == [(e.shard, e.to_node) for e in eb]
        assert_complete(a)
        if active.any():
            assert all(active[a.holder_of(sh)] for sh in range(9))  # only active nodes hold shards
    assert a.reassign(torch.zeros(6, dtype=torch.bool)) == []  # nobody to move to: keep as is
    assert_complete(a)


def test_move_callback_state_dict():
    calls = []
    s = ShardScheduler(3)
    events = s.reassign(mask(3, 0), move=lambda sh, fr, to: calls.append((sh, fr, to)))
    assert calls == [(0, 0, 1)] and events[0].to_dict()["to_node"] == 1
    s2 = ShardScheduler(3)
    s2.load_state_dict(s.state_dict())
    assert s2.assignment() == s.assignment() == [[], [0, 1], [2]]
    with pytest.raises(ValueError, match="expected 4"):
        ShardScheduler(3, num_shards=4).load_state_dict(s.state_dict())
