"""Coordinate-wise order statistics with a blocked sorting network (median, trimmed mean, Bulyan).

``torch.sort`` / ``median`` / ``kthvalue`` along the node dimension run at 0.2-0.7 GB/s on CPU. A
sorting network instead compare-exchanges *whole rows* with ``torch.minimum`` / ``torch.maximum``,
which vectorise over the columns. We run it on column blocks small enough to stay in cache, on a
buffer of M + 1 rows: a compare-exchange writes the min into the spare row and the max in place,
then the wire labels swap (two ops, no copy).

The network is Batcher's odd-even merge sort, pruned backwards to what the statistic needs:

* median: only the middle wire(s); a comparator one of whose outputs is unused costs one op;
* trimmed mean: either the exact middle wires, or (when fewer ops) only the f lowest / f highest
  wires with full comparators, which leaves the middle wires holding exactly the middle multiset;
  we keep whichever plan has fewer ops, then sum the middle wires;
* Bulyan: a full sort (it needs every order statistic of the selected rows).

Non-finite values: NaN is mapped to +inf while the block is copied in, so at most f bad rows put
at most f values at either end of every column, which the statistic trims away.

The aggregate's per-node weights are measured on a sample of column blocks: the share of sampled
coordinates in which each row is among the kept values (an approximation, reported as such).

With ``TDL_COMPILE=1`` median and trimmed mean run the plan through ``torch.compile`` instead
(``_compiled``: one fused loop, CPU or GPU, bitwise the same values). Otherwise, on CPU, median and
trimmed mean (a mean of middle wires) over wide inputs run the same plan as a native kernel (``_native_sort``: the plan compiled to straight-line C, values in registers, one read of
the data) when it can be built; the torch path below serves everything else (GPU, float64,
Bulyan, narrow inputs) and computes bitwise the same values.

Legend: M rows, B columns in a block, D columns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trustworthy_dl.aggregation import _compiled as compiled
from trustworthy_dl.aggregation import _native as native_build
from trustworthy_dl.aggregation import _native_sort as native_sort
from trustworthy_dl.aggregation._parallel import map_column_chunks
from trustworthy_dl.aggregation._rows import Rows

__all__ = ["bulyan_coordinates", "coordinate_median", "median_values", "trimmed_mean_coordinates"]

#: Columns per block: about 1M values per block, 16K-64K columns (M + 1 rows of them stay in the
#: L2/L3 caches; larger blocks amortise the ~1 us cost of each op).
SORT_BLOCK_VALUES = 1 << 20


def sort_block(m: int) -> int:
    """Columns per block for m rows."""
    return max(1 << 14, min(1 << 16, SORT_BLOCK_VALUES // max(1, m)))


#: Column blocks on which the per-node shares of the aggregate are measured, and columns used in each.
SHARE_BLOCKS = 8
SHARE_COLUMNS = 4096

_INF = float("inf")


# --------------------------------------------------------------------------- networks


@functools.cache
def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort on n wires (min goes to i).

    Built for the next power of two; comparators touching wires >= n are dropped, which is exact
    (think of those wires as holding +inf).
    """
    p2 = 1
    while p2 < n:
        p2 *= 2
    comps: list[tuple[int, int]] = []
    p = 1
    while p < p2:
        k = p
        while k >= 1:
            for j in range(k % p, p2 - k, 2 * k):
                for i in range(min(k, p2 - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in comps if b < n)


# An op: (function, input row, input row, output row) over the physical rows of the buffer.
Op = tuple[Callable[..., Tensor], int, int, int]


@dataclass(frozen=True)
class Plan:
    """A pruned network compiled to ops over M + 1 buffer rows; ``wire_row[w]`` holds wire w."""

    n: int
    ops: tuple[Op, ...]
    wire_row: tuple[int, ...]


def _compile(n: int, comps: list[tuple[int, int, bool, bool]]) -> Plan:
    wire_row = list(range(n))
    spare = n
    ops: list[Op] = []
    for a, b, need_min, need_max in comps:
        ra, rb = wire_row[a], wire_row[b]
        if need_min and need_max:
            ops.append((torch.minimum, ra, rb, spare))
            ops.append((torch.maximum, ra, rb, rb))
            wire_row[a], spare = spare, ra
        elif need_min:
            ops.append((torch.minimum, ra, rb, ra))
        else:
            ops.append((torch.maximum, ra, rb, rb))
    return Plan(n, tuple(ops), tuple(wire_row))


def _prune(n: int, needed: set[int], full: bool) -> Plan:
    """Keep the comparators that ``needed`` output wires depend on (``full``: both outputs always)."""
    need = set(needed)
    kept: list[tuple[int, int, bool, bool]] = []
    for a, b in reversed(batcher_network(n)):
        na, nb = a in need, b in need
        if na or nb:
            kept.append((a, b, na or full, nb or full))
            need.update((a, b))
    return _compile(n, kept[::-1])


def _native(
    plan: Plan, middle: tuple[int, int], X: Tensor, min_columns: int = native_build.MIN_COLUMNS
) -> Callable[[Tensor, Tensor, int, int], None] | None:
    """The plan's native kernel for rows like ``X``, or None (then the torch path runs)."""
    if X.device.type != "cpu" or X.dtype != torch.float32 or X.stride(1) != 1 or X.shape[1] < min_columns:
        return None
    return _native_kernel(plan, *middle)


@functools.cache
def _native_kernel(plan: Plan, lo: int, hi: int) -> Callable[[Tensor, Tensor, int, int], None] | None:
    return native_sort.middle_mean_kernel(_int_ops(plan), plan.wire_row, lo, hi)


@functools.cache
def median_plan(n: int) -> Plan:
    return _prune(n, {(n - 1) // 2, n // 2}, full=False)


@functools.cache
def trimmed_plan(n: int, f: int) -> Plan:
    """Plan after which wires f .. n-f-1 hold the middle multiset; the cheaper of two prunings."""
    exact = _prune(n, set(range(f, n - f)), full=False)
    ends = _prune(n, set(range(f)) | set(range(n - f, n)), full=True)
    return exact if len(exact.ops) <= len(ends.ops) else ends


@functools.cache
def sort_plan(n: int) -> Plan:
    return _prune(n, set(range(n)), full=False)


# --------------------------------------------------------------------------- blocked driver


def _share_blocks(nblocks: int) -> set[int]:
    k = min(nblocks, SHARE_BLOCKS)
    return {(i * nblocks) // k for i in range(k)}


Reduce = Callable[[list[Tensor], Tensor, bool], tuple[Tensor, Tensor] | None]


def _run(
    rows: Rows,
    plan: Plan,
    reduce: Reduce,
    sel: Tensor | None = None,
    block: int | None = None,
    middle: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Run ``plan`` over the column blocks of ``rows`` (or of its rows ``sel``).

    ``reduce(wires, out_b, sample)`` writes the block's statistic into ``out_b`` and, when
    ``sample``, returns the (lo, hi) range of kept values for the share measurement.
    ``middle=(lo, hi)``: the statistic is the mean of wires lo..hi, which the native kernel can
    compute (``reduce`` then only serves the sampled columns of the share measurement).
    Returns the (D,) statistic, the (M,) float64 kept-coordinate counts and the kernel used.
    """
    X, D = rows.X, rows.D
    coef = rows.coef
    idx = None
    if sel is not None:
        idx = sel.nonzero().flatten()
        if coef is not None:
            coef = coef.index_select(0, idx)
            idx = None
    B = min(block or sort_block(plan.n), D)
    out = torch.empty(D, dtype=X.dtype, device=X.device)
    sampled = _share_blocks(-(-D // B))
    coef_t = None if coef is None else coef.to(X.dtype)
    diag = None
    if coef_t is not None and coef_t.shape[0] == coef_t.shape[1]:
        d = coef_t.diagonal()
        if bool(torch.equal(torch.diag(d), coef_t)):
            diag = d.contiguous()

    if middle is not None and idx is None and coef_t is None and compiled.enabled():
        value = compiled.middle_mean(plan.ops, plan.wire_row, *middle, X)
        if value is not None:
            return value, _sample_counts(X, None, None, None, plan, reduce, sampled, B), "compiled"
    kern = _native(plan, middle, X) if middle is not None and idx is None else None
    if kern is not None:

        def native(start: int, stop: int) -> None:
            _native_chunk(X, coef_t, diag, kern, out, start, stop, B)

        map_column_chunks(native, D, B, X.device)
        return out, _sample_counts(X, coef_t, diag, None, plan, reduce, sampled, B), "native"

    def chunk(start: int, stop: int) -> Tensor:
        return _run_chunk(X, coef_t, diag, idx, plan, reduce, out, sampled, start, stop, B)

    counts = torch.stack(map_column_chunks(chunk, D, B, X.device)).sum(0)
    return out, counts, "torch"


def _sample_counts(
    X: Tensor,
    coef: Tensor | None,
    diag: Tensor | None,
    idx: Tensor | None,
    plan: Plan,
    reduce: Reduce,
    sampled: set[int],
    B: int,
) -> Tensor:
    """The share counts of the torch path, computed on the sampled columns only (the same columns
    the torch path samples), for a statistic the native kernel produced."""
    D = X.shape[1]
    cols = [(i * B, min(D, i * B + SHARE_COLUMNS)) for i in sorted(sampled)]
    Xs = torch.cat([X[:, a:b] for a, b in cols], 1)
    Bs = min(SHARE_COLUMNS, int(Xs.shape[1]))
    scratch = torch.empty(Xs.shape[1], dtype=X.dtype, device=X.device)
    every = set(range(len(cols)))
    return _run_chunk(Xs, coef, diag, idx, plan, reduce, scratch, every, 0, int(Xs.shape[1]), Bs)


def _native_chunk(
    X: Tensor,
    coef: Tensor | None,
    diag: Tensor | None,
    kern: Callable[[Tensor, Tensor, int, int], None],
    out: Tensor,
    start: int,
    stop: int,
    B: int,
) -> None:
    if coef is None:
        kern(X, out, start, stop)
        return
    buf = torch.empty(coef.shape[0], B, dtype=X.dtype, device=X.device)
    for s in range(start, stop, B):  # mixed rows: materialise one block at a time
        e = min(stop, s + B)
        Yb = buf[:, : e - s]
        _mix_block(X[:, s:e], coef, Yb, diag)
        kern(Yb, out[s:e], 0, e - s)


def _run_chunk(
    X: Tensor,
    coef: Tensor | None,
    diag: Tensor | None,
    idx: Tensor | None,
    plan: Plan,
    reduce: Reduce,
    out: Tensor,
    sampled: set[int],
    start: int,
    stop: int,
    B: int,
) -> Tensor:
    M = plan.n
    dev, dt = X.device, X.dtype
    buf = torch.empty(M + 1, B, dtype=dt, device=dev)
    orig = torch.empty(M, min(B, SHARE_COLUMNS), dtype=dt, device=dev)
    counts = torch.zeros(M, dtype=torch.float64, device=dev)
    full = list(buf.unbind(0))
    for s in range(start, stop, B):
        e = min(stop, s + B)
        w = e - s
        Xb = X[:, s:e]
        Yb = buf[:M, :w]
        if coef is not None:
            _mix_block(Xb, coef, Yb, diag)
        elif idx is not None:
            torch.index_select(Xb, 0, idx, out=Yb)
            torch.nan_to_num(Yb, nan=_INF, posinf=_INF, neginf=-_INF, out=Yb)
        else:
            torch.nan_to_num(Xb, nan=_INF, posinf=_INF, neginf=-_INF, out=Yb)
        sample = s // B in sampled
        ws = min(w, SHARE_COLUMNS)
        if sample:
            orig[:, :ws].copy_(Yb[:, :ws])
        r = full if w == B else [t[:w] for t in full]
        for fn, x, y, o in plan.ops:
            fn(r[x], r[y], out=r[o])
        rng = reduce([r[i] for i in plan.wire_row], out[s:e], sample)
        if sample and rng is not None:
            lo, hi = rng[0][:ws], rng[1][:ws]
            ob = orig[:, :ws]
            counts += ((ob >= lo) & (ob <= hi)).sum(1, dtype=torch.float64)
    return counts


def _mix_block(Xb: Tensor, coef: Tensor, Yb: Tensor, diag: Tensor | None = None) -> None:
    """``Yb = coef @ Xb``; rows mixing a non-finite value become +inf (no NaN leaks via 0 * NaN).

    ``diag``: the coefficients when ``coef`` is diagonal (clipping), applied as a row scaling.
    """
    if diag is not None:
        torch.mul(Xb, diag[:, None], out=Yb)
        torch.nan_to_num(Yb, nan=_INF, posinf=_INF, neginf=-_INF, out=Yb)
        return
    nb = torch.linalg.vector_norm(Xb, dim=1)
    bad = ~torch.isfinite(nb)
    if bool(bad.any()):
        clean = torch.nan_to_num(Xb, nan=0.0, posinf=0.0, neginf=0.0)
        torch.mm(coef, clean, out=Yb)
        Yb[(coef[:, bad] != 0).any(1)] = _INF
    else:
        torch.mm(coef, Xb, out=Yb)


def _shares(counts: Tensor) -> Tensor:
    total = float(counts.sum())
    return counts / total if total > 0 else torch.full_like(counts, 1.0 / max(1, counts.numel()))


# --------------------------------------------------------------------------- statistics


def coordinate_median(rows: Rows, *, block: int | None = None) -> tuple[Tensor, Tensor, str]:
    """Coordinate-wise median of the rows (mean of the two middle values for even M).

    Returns (median_D, shares_M, kernel used: "compiled", "native" or "torch").
    """
    n = rows.n
    plan = median_plan(n)
    lo_w, hi_w = (n - 1) // 2, n // 2

    def reduce(wires: list[Tensor], out_b: Tensor, sample: bool) -> tuple[Tensor, Tensor] | None:
        lo, hi = wires[lo_w], wires[hi_w]
        if lo_w == hi_w:
            out_b.copy_(lo)
        else:
            torch.add(lo, hi, out=out_b).mul_(0.5)
        return (lo, hi) if sample else None

    out, counts, kernel = _run(rows, plan, reduce, block=block, middle=(lo_w, hi_w))
    return out, _shares(counts), kernel


#: ``median_values`` runs the native kernel from this many columns (each M compiles its own plan).
MEDIAN_VALUES_MIN_COLUMNS = 4096


def median_values(X: Tensor) -> Tensor:
    """The coordinate-wise median of the rows of ``X`` alone (no shares, no checks): for callers
    such as the stage-1 detector that need only the values. Uses the native kernel from
    :data:`MEDIAN_VALUES_MIN_COLUMNS` columns (bitwise the torch path's values)."""
    n, D = X.shape
    kern = _native(median_plan(n), ((n - 1) // 2, n // 2), X, min_columns=MEDIAN_VALUES_MIN_COLUMNS)
    if kern is None:
        return coordinate_median(Rows(X, None, rule="median"))[0]
    out = torch.empty(D, dtype=X.dtype)
    map_column_chunks(lambda s, e: kern(X, out, s, e), D, sort_block(n), X.device)
    return out


def trimmed_mean_coordinates(rows: Rows, f: int, *, block: int | None = None) -> tuple[Tensor, Tensor, str]:
    """Coordinate-wise mean after dropping the f lowest and f highest values (2f < M).

    Returns (value_D, shares_M, kernel used: "compiled", "native" or "torch").
    """
    n = rows.n
    plan = trimmed_plan(n, f)
    k = n - 2 * f

    def reduce(wires: list[Tensor], out_b: Tensor, sample: bool) -> tuple[Tensor, Tensor] | None:
        mid = wires[f : n - f]
        if k == 1:
            out_b.copy_(mid[0])
        else:
            torch.add(mid[0], mid[1], out=out_b)
            for t in mid[2:]:
                out_b.add_(t)
            out_b.mul_(1.0 / k)
        if not sample:
            return None
        lo, hi = mid[0].clone(), mid[0].clone()
        for t in mid[1:]:
            torch.minimum(lo, t, out=lo)
            torch.maximum(hi, t, out=hi)
        return lo, hi

    out, counts, kernel = _run(rows, plan, reduce, block=block, middle=(f, n - f - 1))
    return out, _shares(counts), kernel


def bulyan_coordinates(
    rows: Rows, sel_M: Tensor, beta: int, *, block: int | None = None
) -> tuple[Tensor, Tensor]:
    """Bulyan's second stage over the selected rows: per coordinate, the mean of the ``beta``
    values closest to the median.

    The beta closest values form a window of the sorted column; among the windows
    [k, k + beta - 1], k = 0 .. theta - beta, the best is the one whose farther end is closest to
    the median. Windows within float rounding (1e-6, relative) of the best are averaged: with
    duplicate values (colluding nodes, NNM mixtures) several windows tie exactly, and the choice
    must not depend on rounding or on the order of the nodes. Returns (value_D, shares over the
    selected rows).
    """
    theta = int(sel_M.sum())
    plan = sort_plan(theta)
    lo_w, hi_w = (theta - 1) // 2, theta // 2
    nwin = theta - beta + 1

    def reduce(s: list[Tensor], out_b: Tensor, sample: bool) -> tuple[Tensor, Tensor] | None:
        med = (s[lo_w] + s[hi_w]) * 0.5
        costs = [torch.maximum(med - s[k], s[k + beta - 1] - med) for k in range(nwin)]
        best = costs[0].clone()
        for c in costs[1:]:
            torch.minimum(best, c, out=best)
        tol = (med.abs() + best) * 1e-6
        best.add_(tol)
        out_b.zero_()
        count = torch.zeros_like(med)
        lo = torch.full_like(med, _INF) if sample else None
        hi = torch.full_like(med, -_INF) if sample else None
        for k in range(nwin):
            tied = costs[k] <= best
            win = s[k].clone()
            for t in range(k + 1, k + beta):
                win.add_(s[t])
            out_b.add_(torch.where(tied, win, 0.0))
            count.add_(tied)
            if sample:
                torch.minimum(lo, torch.where(tied, s[k], _INF), out=lo)  # type: ignore[arg-type]
                torch.maximum(hi, torch.where(tied, s[k + beta - 1], -_INF), out=hi)  # type: ignore[arg-type]
        out_b.div_(count.mul_(beta))
        return (lo, hi) if sample else None  # type: ignore[return-value]

    kern = _native_bulyan(plan, beta, rows)
    if kern is not None:  # unmixed float32 rows on the CPU, wide enough
        X, D = rows.X, rows.D
        idx = sel_M.nonzero().flatten()
        chosen = [X[int(i)] for i in idx]
        B = min(block or sort_block(theta), D)
        out = torch.empty(D, dtype=X.dtype, device=X.device)
        map_column_chunks(lambda s, e: kern(chosen, out, s, e), D, B, X.device)
        sampled = _share_blocks(-(-D // B))
        return out, _shares(_sample_counts(X, None, None, idx, plan, reduce, sampled, B))
    out, counts, _ = _run(rows, plan, reduce, sel=sel_M, block=block)
    return out, _shares(counts)


def _native_bulyan(
    plan: Plan, beta: int, rows: Rows
) -> Callable[[list[Tensor], Tensor, int, int], None] | None:
    X = rows.X
    if rows.coef is not None or X.device.type != "cpu" or X.dtype != torch.float32 or X.stride(1) != 1:
        return None
    if X.shape[1] < native_build.MIN_COLUMNS:
        return None
    return _native_bulyan_kernel(plan, beta)


@functools.cache
def _native_bulyan_kernel(plan: Plan, beta: int) -> Callable[[list[Tensor], Tensor, int, int], None] | None:
    return native_sort.bulyan_kernel(_int_ops(plan), plan.wire_row, beta)


def _int_ops(plan: Plan) -> list[native_sort.Op]:
    """The plan's ops as the native generator reads them: (0 = min / 1 = max, x, y, out)."""
    return [(0 if fn is torch.minimum else 1, x, y, o) for fn, x, y, o in plan.ops]
