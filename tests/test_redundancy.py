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
