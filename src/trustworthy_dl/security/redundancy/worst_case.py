"""The omniscient adversary of ByzShield: which q nodes to corrupt to win the most file votes.

A file's vote is lost when at least ceil(r_f / 2) of its r_f copies (a majority, or half on an
even r_f: a tie is not an honest win) come from corrupted nodes. The maximum over all q-subsets
of nodes is found exactly: by enumeration when C(K, q) is small, otherwise as an integer
program (binary x_w for nodes, y_f for files; maximise sum y_f subject to sum x_w = q and
ceil(r_f / 2) y_f <= sum_{w holds f} x_w), solved by HiGHS through ``scipy.optimize.milp``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["distorted", "worst_case_distorted"]

ENUMERATION_LIMIT = 200_000


def distorted(assignment: np.ndarray, workers: list[int] | np.ndarray) -> int:
    """Files whose vote the given corrupted workers win."""
    inc = np.asarray(assignment, dtype=bool)
    need = (inc.sum(0) + 1) // 2
    hit = inc[np.asarray(list(workers), dtype=int)].sum(0) if len(workers) else np.zeros(inc.shape[1])
    return int((hit >= need).sum())


def _enumerate(inc: np.ndarray, q: int) -> tuple[int, list[int]]:
    need = (inc.sum(0) + 1) // 2
    a = inc.astype(np.int16)
    best, best_set = -1, []
    combos = itertools.combinations(range(inc.shape[0]), q)
    while True:
        chunk = np.array(list(itertools.islice(combos, 20_000)), dtype=np.int64)
        if chunk.size == 0:
            break
        counts = a[chunk].sum(1)  # (chunk, files)
        dam = (counts >= need).sum(1)
        i = int(dam.argmax())
        if int(dam[i]) > best:
            best, best_set = int(dam[i]), sorted(chunk[i].tolist())
    return best, best_set


def _milp(inc: np.ndarray, q: int) -> tuple[int, list[int]]:
    from scipy.optimize import Bounds, LinearConstraint, milp

    k, f = inc.shape
    need = (inc.sum(0) + 1) // 2
    c = np.concatenate([np.zeros(k), -np.ones(f)])
    a_sum = np.concatenate([np.ones(k), np.zeros(f)])[None, :]
    a_file = np.concatenate(
        [-inc.T.astype(float), np.diag(need.astype(float))], axis=1
    )  # need*y - sum x <= 0
    res = milp(
        c,
        constraints=[LinearConstraint(a_sum, q, q), LinearConstraint(a_file, -np.inf, 0)],
        integrality=np.ones(k + f),
        bounds=Bounds(0, 1),
    )
    if not res.success:
        raise RuntimeError(f"the worst-case integer program failed: {res.message}")
    workers = sorted(int(w) for w in np.nonzero(res.x[:k] > 0.5)[0])
    return distorted(inc, workers), workers


def worst_case_distorted(assignment: np.ndarray, q: int) -> tuple[int, list[int]]:
    """The most files an adversary holding q workers distorts, and one such worker set."""
    inc = np.asarray(assignment, dtype=bool)
    if inc.ndim != 2:
        raise ValueError(f"assignment must be a workers x files matrix, got shape {inc.shape}")
    k = inc.shape[0]
    if not 0 <= q <= k:
        raise ValueError(f"q must be in 0..{k} (the workers), got {q}")
    if q == 0:
        return 0, []
    if math.comb(k, q) <= ENUMERATION_LIMIT:
        return _enumerate(inc, q)
    return _milp(inc, q)
