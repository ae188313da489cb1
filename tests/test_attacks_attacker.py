"""AdversarialAttacker: who is Byzantine, when they attack, collusion, determinism."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from trustworthy_dl.attacks import AdversarialAttacker, get_attack
from trustworthy_dl.attacks.alie import alie_z
from trustworthy_dl.config import AttackConfig
from trustworthy_dl.errors import ConfigError

N, D = 10, 50


def make(name: str = "gaussian", *, seed: int = 0, **kw: Any) -> AdversarialAttacker:
    kw.setdefault("num_byzantine", 3)
    return AdversarialAttacker(AttackConfig(name=name, **kw), num_nodes=N, seed=seed)


@pytest.fixture
def updates() -> Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0)) + 0.5


def test_none_is_identity(updates: Tensor) -> None:
    att = AdversarialAttacker(AttackConfig(), num_nodes=N, seed=0)
    assert att.byzantine_ids == [] and att.attack is None and not att.is_data_attack
    assert not any(att.active(r) for r in range(5))
    assert att.corrupt(updates, round=0) is updates
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert att.corrupt_batch(0, x, y, round=0, num_classes=2) == (x, y)


def test_byzantine_ids_deterministic_from_seed() -> None:
    a, b = make(seed=7), make(seed=7)
    assert a.byzantine_ids == b.byzantine_ids and len(a.byzantine_ids) == 3
    assert a.byzantine_ids == sorted(a.byzantine_ids) and all(0 <= i < N for i in a.byzantine_ids)
    assert len({tuple(make(seed=s).byzantine_ids) for s in range(10)}) > 1
    assert all(a.is_byzantine(i) == (i in a.byzantine_ids) for i in range(N))


def test_explicit_ids_win_and_are_checked() -> None:
    assert make(byzantine_ids=[8, 2]).byzantine_ids == [2, 8]
    with pytest.raises(ConfigError, match="byzantine_ids"):
        make(byzantine_ids=[0, 12])
    with pytest.raises(ConfigError, match="num_byzantine"):
        make(num_byzantine=N)


def test_schedule_start_end_every() -> None:
    att = make(start_round=2, end_round=8, every=3)
    assert [r for r in range(12) if att.active(r)] == [2, 5, 8]
    assert [r for r in range(6) if make(start_round=1).active(r)] == [1, 2, 3, 4, 5]


def test_inactive_round_is_identity(updates: Tensor) -> None:
    att = make(start_round=3)
    assert att.corrupt(updates, round=2) is updates
    assert not torch.equal(att.corrupt(updates, round=3), updates)


def test_corrupt_replaces_only_byzantine_rows(updates: Tensor) -> None:
    before = updates.clone()
    att = make("sign_flip", collude=False)
    out = att.corrupt(updates, round=0)
    assert torch.equal(updates, before)  # input untouched
    ids = att.byzantine_ids
    honest = [i for i in range(N) if i not in ids]
    assert torch.equal(out[honest], updates[honest])
    torch.testing.assert_close(out[ids], -updates[ids])  # each node flips its own row


def test_collude_shares_one_vector(updates: Tensor) -> None:
    att = make("gaussian", collude=True)
    byz = att.corrupt(updates, round=0)[att.byzantine_ids]
    assert torch.equal(byz, byz[:1].expand_as(byz))
    att = make("sign_flip", collude=True)
    byz = att.corrupt(updates, round=0)[att.byzantine_ids]
    torch.testing.assert_close(byz, -updates[att.byzantine_ids].mean(0).expand_as(byz))


def test_no_collusion_each_node_its_own_draw(updates: Tensor) -> None:
    att = make("gaussian", collude=False)
    byz = att.corrupt(updates, round=0)[att.byzantine_ids]
    assert not torch.equal(byz[0], byz[1]) and not torch.equal(byz[1], byz[2])


def test_runs_are_deterministic_per_seed_and_round(updates: Tensor) -> None:
    a = make("gaussian", seed=1).corrupt(updates, round=4)
    assert torch.equal(a, make("gaussian", seed=1).corrupt(updates, round=4))
    assert not torch.equal(a, make("gaussian", seed=1).corrupt(updates, round=5))


def test_omniscient_attack_uses_honest_rows_only(updates: Tensor) -> None:
    att = make("alie")
    ids = att.byzantine_ids
    honest = updates[[i for i in range(N) if i not in ids]]
    expected = honest.mean(0) - alie_z(N, 3) * honest.std(0, correction=0)
    out = att.corrupt(updates, round=0)
    torch.testing.assert_close(out[ids], expected.expand(3, D))


def test_optimal_attack_gets_the_aggregator(updates: Tensor) -> None:
    def median(u: Tensor) -> Tensor:
        return u.median(0).values

    att = make("optimal_ipm")
    out = att.corrupt(updates, round=0, aggregator=median)
    honest = updates[[i for i in range(N) if i not in att.byzantine_ids]]
    fixed = get_attack("ipm")(honest, num_byzantine=3)
    dev = float(torch.linalg.vector_norm(median(out) - honest.mean(0)))
    dev_fixed = float(torch.linalg.vector_norm(median(torch.cat([honest, fixed])) - honest.mean(0)))
    assert dev >= dev_fixed - 1e-6
    with pytest.raises(ValueError, match="aggregator"):
        att.corrupt(updates, round=0)


def test_data_attack_poisons_only_byzantine_batches(updates: Tensor) -> None:
    att = make("label_flip", start_round=1)
    assert att.is_data_attack
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])
    byz = att.byzantine_ids[0]
    honest = next(i for i in range(N) if not att.is_byzantine(i))
    assert torch.equal(att.corrupt_batch(byz, x, y, round=1, num_classes=4)[1], torch.tensor([3, 2, 1, 0]))
    assert att.corrupt_batch(honest, x, y, round=1, num_classes=4)[1] is y
    assert att.corrupt_batch(byz, x, y, round=0, num_classes=4)[1] is y  # before start_round
    assert att.corrupt(updates, round=1) is updates  # no boost: the update rows stay


def test_backdoor_boost_scales_byzantine_rows(updates: Tensor) -> None:
    att = make("backdoor", params={"boost": 5.0})
    out = att.corrupt(updates, round=0)
    ids = att.byzantine_ids
    torch.testing.assert_close(out[ids], 5.0 * updates[ids])
    honest = [i for i in range(N) if i not in ids]
    assert torch.equal(out[honest], updates[honest])


def test_update_attack_leaves_batches_alone() -> None:
    att = make("alie")
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert att.corrupt_batch(att.byzantine_ids[0], x, y, round=0, num_classes=2) == (x, y)


def test_bad_params_from_config() -> None:
    """Bad attack params fail when the config is loaded, naming the valid ones."""
    from trustworthy_dl.config import config_from_dict

    with pytest.raises(ConfigError, match="epsilon"):
        config_from_dict({"attack": {"name": "ipm", "num_byzantine": 3, "params": {"eps": 1.0}}})


def test_state_dict_round_trip() -> None:
    att = make(seed=3)
    att.load_state_dict(att.state_dict())
    with pytest.raises(ConfigError, match="differ"):
        att.load_state_dict({"byzantine_ids": [0, 1, 2, 3]})
    assert att.describe()["byzantine_ids"] == att.byzantine_ids


def test_optimal_attacks_probe_the_aggregator_in_node_order(updates: Tensor) -> None:
    # The engine's probe treats nodes differently (only trusted ones count); the attacks stack
    # [honest; Byzantine] rows, so the attacker must hand each row back as the node that sent it.
    att = make("optimal_ipm", byzantine_ids=[1, 4, 7])
    seen: list[Tensor] = []

    def marker_mean(rows: Tensor) -> Tensor:  # records which node's row sits where
        seen.append(rows[:, 0].clone())
        return rows.mean(0)

    marked = updates.clone()
    marked[:, 0] = torch.arange(N, dtype=marked.dtype) * 1000  # honest rows carry their node id
    att.corrupt(marked, round=0, aggregator=marker_mean)
    assert seen
    honest = [i for i in range(N) if i not in (1, 4, 7)]
    for col in seen:
        assert torch.equal(col[honest], torch.tensor(honest, dtype=col.dtype) * 1000)

    # a probe that ignores the Byzantine nodes (they are quarantined) leaves the attack nothing to
    # push: the search keeps its starting epsilon
    active = torch.ones(N, dtype=torch.bool)
    active[[1, 4, 7]] = False
    out = att.corrupt(updates, round=0, aggregator=lambda rows: rows[active].mean(0))
    mu = updates[active].mean(0)
    torch.testing.assert_close(out[1], -0.1 * mu)


def test_probing_through_the_node_order_wrapper_restores_a_stateful_aggregator(updates: Tensor) -> None:
    from trustworthy_dl.aggregation import get_aggregator

    cc = get_aggregator("centered_clip", f=3, iterations=2)
    cc(updates)  # now it has a centre
    before = cc.state_dict()["aggregator"]["centre"].clone()
    make("optimal_alie", byzantine_ids=[0, 5, 9]).corrupt(updates, round=0, aggregator=cc)
    assert torch.equal(cc.state_dict()["aggregator"]["centre"], before)
