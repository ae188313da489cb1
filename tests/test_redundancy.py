"""Redundancy placements (DETOX, ByzShield MOLS and Ramanujan) and the worst-case adversary."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trustworthy_dl.security.redundancy import distorted, make_assignment, worst_case_distorted
from trustworthy_dl.security.redundancy.worst_case import _enumerate, _milp


@pytest.mark.parametrize(
    ("scheme", "k", "r", "files", "per_node"),
    [
        ("detox", 15, 3, 5, 1),
        ("mols", 15, 3, 25, 5),
        ("ramanujan1", 15, 3, 25, 5),
        ("ramanujan2", 25, 5, 25, 5),
    ],
)
def test_placements_have_the_papers_shape(scheme: str, k: int, r: int, files: int, per_node: int) -> None:
    a = make_assignment(scheme, workers=k, replication=r)
    assert a.shape == (k, files) and a.dtype == bool
    assert (a.sum(0) == r).all()  # every file computed r times
    assert (a.sum(1) == per_node).all()  # the same load on every node


def test_mols_nodes_of_different_squares_share_exactly_one_file() -> None:
    a = make_assignment("mols", workers=21, replication=3).astype(int)  # l = 7
    side = 7
    for u, v in itertools.combinations(range(21), 2):
        shared = int(a[u] @ a[v])
        assert shared == (0 if u // side == v // side else 1)


def test_bad_parameters_list_supported_values() -> None:
    with pytest.raises(ValueError, match=r"l = K / r prime.*Supported"):
        make_assignment("mols", workers=16, replication=4)
    with pytest.raises(ValueError, match="r < s"):
        make_assignment("ramanujan1", workers=15, replication=5)
    with pytest.raises(ValueError, match="K = s\\^2"):
        make_assignment("ramanujan2", workers=24, replication=5)
    with pytest.raises(ValueError, match="unknown redundancy scheme"):
        make_assignment("byz", workers=15, replication=3)
    with pytest.raises(ValueError, match="divisible"):
        make_assignment("detox", workers=10, replication=3)


def test_worst_case_detox_closed_form_and_exact_search() -> None:
    a = make_assignment("detox", workers=15, replication=3)
    for q in range(0, 8):
        count, workers = worst_case_distorted(a, q)
        assert count == q // 2 and len(workers) == q  # two corrupted copies win a group's vote
        assert distorted(a, workers) == count


def test_worst_case_mols_k15_and_milp_equals_enumeration() -> None:
    a = make_assignment("mols", workers=15, replication=3)
    counts = [worst_case_distorted(a, q)[0] for q in range(1, 8)]
    assert counts == [0, 1, 3, 5, 8, 12, 14]  # of 25 files
    for q in (3, 5):
        assert _milp(a, q)[0] == _enumerate(a, q)[0]
    rng = np.random.default_rng(0)
    for _ in range(5):  # no random worker set beats the optimum
        ws = rng.choice(15, size=5, replace=False).tolist()
        assert distorted(a, ws) <= counts[4]
    with pytest.raises(ValueError, match="q must be"):
        worst_case_distorted(a, 16)


# --------------------------------------------------------------------------- voting in training


def test_majority_vote_exact_and_tolerance() -> None:
    import torch

    from trustworthy_dl.security.redundancy.vote import majority_vote

    g, bad = torch.arange(4.0), torch.full((4,), 9.0)
    v = majority_vote(torch.stack([g, bad, g]))
    assert v.winner in (0, 2) and v.agree_C.tolist() == [True, False, True]
    v = majority_vote(torch.stack([bad, bad, g]))  # two colluding copies win the file
    assert v.winner in (0, 1) and v.agree_C.tolist() == [True, True, False]
    assert majority_vote(torch.stack([g, bad])).winner is None  # 1 vs 1: no strict majority
    near = g + 1e-7
    assert majority_vote(torch.stack([g, near, bad])).winner is None  # exact: three different copies
    assert majority_vote(torch.stack([g, near, bad]), mode="tolerance", tolerance=1e-5).winner in (0, 1)


def test_redundancy_config_errors_name_the_problem() -> None:
    from trustworthy_dl.config import load_config
    from trustworthy_dl.engine.setup import check_supported
    from trustworthy_dl.errors import ConfigError

    def check(*sets: str) -> None:
        check_supported(load_config(None, list(sets)))

    with pytest.raises(ConfigError, match=r"security.redundancy: mols needs .*Supported, e.g.: \(K=6, r=2\)"):
        check("distributed.num_nodes=16", "security.redundancy.scheme=mols")
    with pytest.raises(ConfigError, match="attack_detection=true"):
        check("distributed.num_nodes=15", "security.redundancy.scheme=mols", "security.attack_detection=true")
    with pytest.raises(ConfigError, match=r"placement=worst_case needs security\.redundancy\.scheme"):
        check("attack.placement=worst_case")
    with pytest.raises(ConfigError, match="Input should be 'none', 'detox'"):
        check("security.redundancy.scheme=byzshield")


@pytest.mark.slow
def test_byzshield_training_votes_out_the_worst_case_adversary() -> None:
    from trustworthy_dl.config import load_config
    from trustworthy_dl.engine.run import run_experiment

    sets = [
        "distributed.num_nodes=15", "security.redundancy.scheme=mols", "attack.placement=worst_case",
        "attack.name=sign_flip", "attack.params.scale=4", "attack.num_byzantine=3", "aggregation.name=median",
        "training.batch_size=8", "training.max_rounds=6", "training.eval_every=3", "output.progress=false",
    ]  # fmt: skip
    res = run_experiment(load_config(None, sets), write=False)
    red, s = res.summary["redundancy"], res.summary
    a = make_assignment("mols", workers=15, replication=3)
    best, nodes = worst_case_distorted(a, 3)
    assert s["byzantine_ids"] == sorted(nodes) and red["worst_case_distorted_for_q"] == best == 3
    assert (
        red["files"] == 25
        and red["replication_overhead"] == 3.0
        and red["gradient_evaluations_per_round"] == 75
    )
    first = res.history[0]["redundancy"]
    assert first["distorted"] == best and first["copies"] == 75  # the adversary wins exactly its best files
    won = a[nodes].sum(0) >= 2  # the files two of the three hold
    assert first["lost_votes"] == [
        int(a[i].sum() - (a[i] & won).sum()) if i in nodes else int((a[i] & won).sum()) for i in range(15)
    ]
    assert s["detection"]["latency_rounds_max"] <= 3 and s["detection"]["false_quarantines"] == 0
    assert res.history[-1]["redundancy"]["distorted"] == 0  # quarantined copies no longer vote
    assert s["final"]["test_accuracy"] > 0.3
