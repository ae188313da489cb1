"""Which node computes which data file: the placements of DETOX and ByzShield.

Every file is computed by r nodes and its gradient is taken by majority vote over the r copies;
the placement decides how many votes an adversary holding q nodes can win. An assignment is a
boolean ``workers x files`` incidence matrix.

* ``detox`` (Rajput et al. 2019): K / r disjoint groups of r nodes; every node of a group holds
  the group's files (``files_per_group``, default 1).
* ``mols`` (Konstantinidis & Ramamoorthy 2021, ByzShield): l = K / r prime and r <= l - 1
  mutually orthogonal Latin squares L_k(i, j) = (k i + j) mod l, k = 1..r, over l^2 files (i, j);
  node (k, s) holds the l files with L_k(i, j) = s. Any two nodes of different squares share
  exactly one file, which is what limits an adversary.
* ``ramanujan1`` / ``ramanujan2`` (ByzShield, after Burnwal & Vidyasagar's Ramanujan bigraphs):
  s prime, the (s^2) x (m s) block matrix B with block (t, c) = P^(t c mod s) (P the s x s cyclic
  shift). Case 1 (m < s): nodes are B's m s columns, files its s^2 rows: K = m s, r = m, s
  files per node. Case 2 (m >= s, s divides m): nodes are B's s^2 rows, files its m s columns:
  K = s^2, r = s, m files per node.

Invalid parameters raise a ValueError that lists the supported values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["SCHEMES", "make_assignment"]

SCHEMES = ("detox", "mols", "ramanujan1", "ramanujan2")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _detox(workers: int, replication: int, files_per_group: int = 1) -> np.ndarray:
    if replication < 1 or workers % replication:
        raise ValueError(
            f"detox needs workers divisible by the replication r; got K={workers}, r={replication}"
        )
    if files_per_group < 1:
        raise ValueError(f"detox files_per_group must be >= 1, got {files_per_group}")
    groups = workers // replication
    inc = np.zeros((workers, groups * files_per_group), dtype=bool)
    for w in range(workers):
        g = w // replication
        inc[w, g * files_per_group : (g + 1) * files_per_group] = True
    return inc


def _mols(workers: int, replication: int) -> np.ndarray:
    r = replication
    ok = [(k * side, k) for side in range(3, 40) if _is_prime(side) for k in range(2, side)]
    if r < 2 or workers % r or not _is_prime(workers // r) or r > workers // r - 1:
        examples = ", ".join(f"(K={k}, r={rr})" for k, rr in ok if rr <= 5 and k <= 60)
        raise ValueError(
            f"mols needs l = K / r prime and 2 <= r <= l - 1; got K={workers}, r={r}. Supported, e.g.: {examples}"
        )
    side = workers // r  # l of the paper
    inc = np.zeros((workers, side * side), dtype=bool)
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    for k in range(1, r + 1):
        square = (k * i + j) % side
        for s in range(side):
            inc[(k - 1) * side + s, (square == s).reshape(-1)] = True
    return inc


def _ramanujan_b(m: int, s: int) -> np.ndarray:
    """The (s^2) x (m s) biadjacency matrix B, block (t, c) = P^(t c mod s)."""
    b = np.zeros((s * s, m * s), dtype=bool)
    rows = np.arange(s)
    for t in range(s):
        for c in range(m):
            shift = (t * c) % s
            b[t * s + rows, c * s + (rows + shift) % s] = True  # P^shift: row i has its 1 at column i+shift
    return b


def _ramanujan1(workers: int, replication: int) -> np.ndarray:
    m = replication
    s = workers // m if m else 0
    if m < 2 or workers % m or not _is_prime(s) or not m < s:
        raise ValueError(
            f"ramanujan1 needs K = r * s with s prime and r < s; got K={workers}, r={m}. "
            "Supported, e.g.: (K=10, r=2), (K=15, r=3), (K=21, r=3), (K=28, r=4), (K=35, r=5), (K=55, r=5)"
        )
    return _ramanujan_b(m, s).T.copy()


def _ramanujan2(workers: int, replication: int, files_per_node: int | None = None) -> np.ndarray:
    s = replication
    m = s if files_per_node is None else files_per_node
    if workers != s * s or not _is_prime(s) or m < s or m % s:
        raise ValueError(
            f"ramanujan2 needs K = s^2 with s = r prime, and files_per_node m a multiple of s (m >= s); got "
            f"K={workers}, r={s}, m={m}. Supported, e.g.: (K=9, r=3), (K=25, r=5), (K=49, r=7)"
        )
    return _ramanujan_b(m, s)


def make_assignment(scheme: str, *, workers: int, replication: int, **params: Any) -> np.ndarray:
    """The ``workers x files`` boolean incidence of ``scheme`` (see the module docstring)."""
    builders = {"detox": _detox, "mols": _mols, "ramanujan1": _ramanujan1, "ramanujan2": _ramanujan2}
    if scheme not in builders:
        raise ValueError(f"unknown redundancy scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    try:
        inc = builders[scheme](int(workers), int(replication), **params)
    except TypeError as err:
        raise ValueError(f"{scheme}: {err}") from None
    return inc
