"""Minimum-diameter averaging, MDA (El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely
distributed Byzantine machine learning", PODC 2020).

Rule: among all subsets of n - f rows, take the one with the smallest diameter (largest pairwise
distance) and return the (weighted) mean of its rows.
Tolerance: 2f < n.

Exhaustive search is C(n, f) subsets (ByzFL does that). We search the diameter instead: a subset
of diameter <= t exists iff the "conflict graph" (edges between rows farther apart than t) has a
vertex cover of at most f rows: the rows to drop. Binary search over the O(n^2) candidate t; the
cover test is a bounded search tree (a row of degree > f must be dropped; otherwise branch on the
row of largest degree: drop it, or drop all its neighbours). Exact, and fast for the n <= 100 of
practice; past ``max_nodes`` search-tree nodes it falls back to a greedy subset (info reports
``exact: False``). Distances come from one Gram matrix (``_gram``); rows with non-finite values
are infinitely far from everyone. Optimal subsets are rarely unique (the diameter is set by one
pair); the search visits rows from the most outlying (largest sum of squared distances) to the
least, so ties are broken by the data, not by the order of the nodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosInt, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult

__all__ = ["mda", "min_diameter_subset"]


class _Budget(Exception):
    pass


def _cover(adj: list[int], alive: int, k: int, budget: list[int]) -> int | None:
    """A vertex cover (bitmask) of at most k vertices of the graph induced by ``alive``, or None."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _Budget
    best_v, best_deg, edges2 = -1, 0, 0
    a = alive
    while a:
        v = (a & -a).bit_length() - 1
        a &= a - 1
        deg = (adj[v] & alive).bit_count()
        edges2 += deg
        if deg > best_deg:
            best_v, best_deg = v, deg
    if best_deg == 0:
        return 0
    if k <= 0 or edges2 // 2 > k * best_deg:  # k vertices cover at most k * maxdeg edges
        return None
    bit = 1 << best_v
    if best_deg > k:  # cannot drop all its neighbours: it must go
        sub = _cover(adj, alive & ~bit, k - 1, budget)
        return None if sub is None else sub | bit
    sub = _cover(adj, alive & ~bit, k - 1, budget)
    if sub is not None:
        return sub | bit
    nbrs = adj[best_v] & alive
    sub = _cover(adj, alive & ~nbrs & ~bit, k - best_deg, budget)
    return None if sub is None else sub | nbrs


def _greedy(d: list[list[float]], n: int, f: int) -> int:
    """Drop f rows one by one: the endpoint of the current diameter with the larger distance sum."""
    alive = set(range(n))
    dropped = 0
    for _ in range(f):
        i, j = max(((i, j) for i in alive for j in alive if i < j), key=lambda p: d[p[0]][p[1]])
        si = sum(d[i][x] for x in alive)
        sj = sum(d[j][x] for x in alive)
        v = i if si >= sj else j
        alive.discard(v)
        dropped |= 1 << v
    return dropped


def min_diameter_subset(
    sq_dists_MM: Tensor, f: int, *, max_nodes: int = 200_000
) -> tuple[Tensor, float, bool]:
    """(M,) bool mask of an (n - f)-subset of minimum diameter, its squared diameter, exactness."""
    n = int(sq_dists_MM.shape[0])
    keep_all = torch.ones(n, dtype=torch.bool, device=sq_dists_MM.device)
    if f == 0 or n <= 1:
        return keep_all, float(sq_dists_MM.max()), True
    # Relabel the rows from the most to the least outlying (sum of squared distances), so that the
    # search's tie-breaks depend on the data, not on the order of the nodes.
    d_orig = sq_dists_MM.clamp_max(1e300).cpu()
    order = torch.sort(-d_orig.sum(1), stable=True).indices
    d = d_orig[order][:, order]
    dl = d.tolist()
    iu = torch.triu_indices(n, n, 1)
    cand = torch.unique(d[iu[0], iu[1]])  # sorted
    budget = [max_nodes]
    full = (1 << n) - 1

    def cover_at(t: float) -> int | None:
        adj = [sum(1 << j for j in range(n) if dl[i][j] > t) for i in range(n)]
        return _cover(adj, full, f, budget)

    exact = True
    try:
        lo, hi = 0, len(cand) - 1
        best = cover_at(float(cand[hi]))
        while lo < hi:
            mid = (lo + hi) // 2
            c = cover_at(float(cand[mid]))
            if c is not None:
                hi, best = mid, c
            else:
                lo = mid + 1
    except _Budget:
        exact = False
        best = _greedy(dl, n, f)
    assert best is not None
    drop = best
    # A cover smaller than f: drop more rows, farthest (largest distance sum to the kept) first.
    while drop.bit_count() < f:
        kept = [i for i in range(n) if not drop >> i & 1]
        v = max(kept, key=lambda i: (sum(dl[i][j] for j in kept), -i))
        drop |= 1 << v
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order] = torch.tensor([not (drop >> i & 1) for i in range(n)], dtype=torch.bool)
    idx = mask.nonzero().flatten()
    diam = float(d_orig[idx][:, idx].max()) if len(idx) > 1 else 0.0
    return mask.to(sq_dists_MM.device), diam, exact


@AGGREGATORS.register("mda", "minimum_diameter_averaging")
def mda(
    updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: NonNegInt, max_nodes: PosInt = 200_000
) -> AggResult:
    """Weighted mean of the n - f rows of smallest diameter; needs 2f < n."""
    rows = as_rows(updates, weights_N, "mda")
    n = rows.n
    require(2 * f < n, "mda", f=f, n=n, condition="2f < n", stage=rows.stage)
    geo = rows.geometry()
    chosen, diam2, exact = min_diameter_subset(geo.sq_dists(), f, max_nodes=max_nodes)
    if bool((chosen & geo.far).any()) and bool((~geo.far).any()):  # beyond tolerance: > f far rows
        chosen &= ~geo.far
    w = rows.weights * chosen
    total = float(w.sum())
    e = w / total if total > 0 else chosen.to(torch.float64) / max(1, int(chosen.sum()))
    info = {"n": n, "diameter": diam2**0.5, "exact": exact, "chosen": chosen.nonzero().flatten().tolist()}
    return rows.result(rows.combine(e), e, chosen, info)
