"""The shared kernels of the aggregation package against float64 brute-force references.

Gram matrix (centred, blocked, float64 accumulation), sorting networks (median, trimmed mean,
Bulyan's window), the mixing path of the block driver, and MDA's diameter search.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from trustworthy_dl.aggregation import _native, _native_sort
from trustworthy_dl.aggregation._gram import FAR_NORM, centred_gram
from trustworthy_dl.aggregation._rows import Rows
from trustworthy_dl.aggregation._sortnet import (
    batcher_network,
    bulyan_coordinates,
    coordinate_median,
    median_plan,
    sort_plan,
    trimmed_mean_coordinates,
    trimmed_plan,
)
from trustworthy_dl.aggregation.mda import min_diameter_subset


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sorting networks


@pytest.mark.parametrize("n", range(1, 19))
def test_batcher_network_sorts_every_01_input(n: int) -> None:
    # 0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input.
    comps = batcher_network(n)
    for bits in range(1 << min(n, 12)):
        v = [(bits >> i) & 1 for i in range(n)]
        for a, b in comps:
            if v[a] > v[b]:
                v[a], v[b] = v[b], v[a]
        assert v == sorted(v)


def _run_plan(plan, X: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    buf = torch.cat([X, torch.empty(1, X.shape[1])])
    r = list(buf.unbind(0))
    for fn, x, y, o in plan.ops:
        fn(r[x], r[y], out=r[o])
    return [r[i] for i in plan.wire_row]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 11, 16, 17, 32])
def test_plans_match_torch_sort(n: int) -> None:
    X = torch.randn(n, 300, generator=_gen(n))
    S = X.sort(0).values
    wires = _run_plan(median_plan(n), X)
    assert torch.equal(wires[(n - 1) // 2], S[(n - 1) // 2])
    assert torch.equal(wires[n // 2], S[n // 2])
    assert torch.equal(torch.stack(_run_plan(sort_plan(n), X)), S)
    for f in range((n + 1) // 2):
        mid = torch.stack(_run_plan(trimmed_plan(n, f), X)[f : n - f]).sort(0).values
        assert torch.equal(mid, S[f : n - f]), f


def test_pruned_median_is_cheaper_than_a_full_sort() -> None:
    assert len(median_plan(16).ops) < 2 * len(batcher_network(16))
    assert len(trimmed_plan(16, 1).ops) < len(trimmed_plan(16, 7).ops) + 2 * len(batcher_network(16))


@pytest.mark.parametrize("block", [7, 64, None])
@pytest.mark.parametrize("n", [5, 8, 13])
def test_coordinate_statistics_across_blocks(n: int, block: int | None) -> None:
    X = torch.randn(n, 200, generator=_gen(n))
    S = X.double().sort(0).values
    med, shares, _ = coordinate_median(Rows(X), block=block)
    torch.testing.assert_close(med.double(), (S[(n - 1) // 2] + S[n // 2]) / 2)
    assert shares.shape == (n,) and abs(float(shares.sum()) - 1) < 1e-9
    for f in (0, 1, (n - 1) // 2):
        tm, _, _ = trimmed_mean_coordinates(Rows(X), f, block=block)
        torch.testing.assert_close(tm.double(), S[f : n - f].mean(0), atol=1e-6, rtol=1e-6)


def test_bulyan_window_is_the_beta_values_closest_to_the_median() -> None:
    X = torch.randn(9, 500, generator=_gen(3))
    sel = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    beta = 3
    out, _ = bulyan_coordinates(Rows(X), sel, beta, block=64)
    S = X[sel].double()
    med = S.median(0).values  # theta = 7 is odd
    idx = (S - med).abs().argsort(0)[:beta]
    torch.testing.assert_close(out.double(), S.gather(0, idx).mean(0), atol=1e-6, rtol=1e-6)


def test_nan_and_inf_rows_are_trimmed_not_propagated() -> None:
    X = torch.randn(7, 50, generator=_gen(1))
    X[0] = float("nan")
    X[3, ::2] = float("inf")
    X[3, 1::2] = -float("inf")
    med, shares, _ = coordinate_median(Rows(X))
    tm, _, _ = trimmed_mean_coordinates(Rows(X), 2)
    assert torch.isfinite(med).all() and torch.isfinite(tm).all()
    assert shares[0] == 0  # a NaN row is never a middle value


def test_mixing_path_keeps_nan_rows_out_of_clean_mixtures() -> None:
    X = torch.randn(5, 40, generator=_gen(2))
    X[4, 3] = float("nan")
    C = torch.tensor([[0.5, 0.5, 0, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5, 0], [0, 0, 0, 0.5, 0.5]])
    rows = Rows(X).mix(C, torch.full((4,), 0.25, dtype=torch.float64), "test")
    med, _, _ = coordinate_median(rows, block=16)
    Y = C.double() @ torch.nan_to_num(X.double(), nan=0.0)
    Y[3, :16] = float("inf")  # only the mixture that holds the NaN is poisoned, in its block only
    S = Y.sort(0).values
    torch.testing.assert_close(med.double(), (S[1] + S[2]) / 2, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- Gram matrix


def test_gram_matches_float64_reference_on_close_rows() -> None:
    # Rows share a large common component: the uncentred float32 shortcut loses accuracy here.
    g = _gen(0)
    D = 300_000
    X = (torch.randn(1, D, generator=g) * 10 + 0.01 * torch.randn(6, D, generator=g)).float()
    ref = torch.cdist(X.double(), X.double()).square()
    geo = centred_gram(X, block=4096)
    got = geo.sq_dists()
    off = ~torch.eye(6, dtype=torch.bool)
    rel = ((got - ref).abs()[off] / ref[off]).max()
    assert rel < 1e-5, float(rel)
    naive = X @ X.T
    d = naive.diagonal()
    naive_d2 = (d[:, None] + d[None, :] - 2 * naive).double()
    assert ((naive_d2 - ref).abs()[off] / ref[off]).max() > 10 * rel  # the point of centring


def test_gram_handles_far_rows_and_extras() -> None:
    X = torch.randn(5, 100, generator=_gen(4))
    X[1, 7] = float("nan")
    X[2] = 1e30
    X[3, 0] = float("inf")
    E = torch.randn(1, 100, generator=_gen(5))
    geo = centred_gram(X, E, block=32)
    assert geo.far.tolist() == [False, True, True, True, False, False]
    d = geo.sq_dists()
    assert torch.isinf(d[0, 1]) and d[1, 1] == 0
    ok = torch.tensor([0, 4])
    P = torch.cat([X[ok], E]).double()
    torch.testing.assert_close(d[[0, 4, 5]][:, [0, 4, 5]], torch.cdist(P, P).square(), atol=1e-9, rtol=1e-5)
    assert FAR_NORM < 1e30 * 10


@pytest.mark.parametrize("native", [True, False])
def test_gram_far_rows_extras_and_bad_references_on_wide_input(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustworthy_dl.aggregation import _gram

    if not native:
        monkeypatch.setattr(_gram, "_native_gram", lambda X, E: False)
    elif not _gram._native_gram(torch.zeros(3, 1 << 16), None):
        pytest.skip("no C compiler (or TDL_NATIVE=0): the torch path is tested by the other case")
    g = _gen(7)
    N, D = 9, 150_001
    X = torch.randn(1, D, generator=g) + 0.1 * torch.randn(N, D, generator=g)
    X[1, 70_000] = float("nan")
    X[2, 140_000:] = 1e30
    X[4, 70_000:90_000] = float("nan")  # the median-norm reference of a block may be the bad row
    X[5, 70_001:] = float("nan")
    E = torch.randn(2, D, generator=g)
    geo = _gram.centred_gram(X, E)
    assert geo.far.tolist() == [False, True, True, False, True, True, False, False, False, False, False]
    keep = (~geo.far).nonzero().flatten()
    P = torch.cat([X, E])[keep].double()
    ref = torch.cdist(P, P).square()
    got = geo.sq_dists()[keep][:, keep]
    torch.testing.assert_close(got, ref, atol=1e-6 * float(ref.max()), rtol=1e-5)


def test_geometry_of_mixtures_and_scalings() -> None:
    X = torch.randn(4, 64, generator=_gen(6)).double()
    C = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 2.0, 0], [0.2, 0.3, 0.1, 0.4]], dtype=torch.float64)
    geo = centred_gram(X).with_norms(X.square().sum(1)).mixed(C)
    Y = C @ X
    torch.testing.assert_close(geo.sq_dists(), torch.cdist(Y, Y).square(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(geo.sq_norms(), Y.square().sum(1), atol=1e-9, rtol=1e-9)
    e = torch.tensor([0.3, -0.1, 0.5], dtype=torch.float64)  # any combination, even off-affine
    z = e @ Y
    torch.testing.assert_close(geo.sq_dists_to(e), (Y - z).square().sum(1), atol=1e-9, rtol=1e-9)
    affine = centred_gram(X).mixed(C[:1])  # without norms: only affine quantities
    with pytest.raises(RuntimeError, match="absolute"):
        affine.sq_norms()


# --------------------------------------------------------------------------- MDA search


@pytest.mark.parametrize("n,f", [(5, 1), (7, 3), (10, 2), (12, 4), (13, 6)])
def test_mda_search_finds_the_brute_force_diameter(n: int, f: int) -> None:
    for seed in range(3):
        X = torch.randn(n, 6, generator=_gen(seed * 100 + n)).double()
        X[: f // 2] += 5  # a few outliers
        d2 = torch.cdist(X, X).square()
        best = min(float(d2[list(S)][:, list(S)].max()) for S in itertools.combinations(range(n), n - f))
        mask, diam2, exact = min_diameter_subset(d2, f)
        assert exact and int(mask.sum()) == n - f
        assert diam2 == pytest.approx(best, rel=1e-12)


def test_mda_search_is_fast_for_large_n() -> None:
    X = torch.randn(64, 50, generator=_gen(9)).double()
    mask, _, exact = min_diameter_subset(torch.cdist(X, X).square(), 15)
    assert exact and int(mask.sum()) == 49


# --------------------------------------------------------------------------- native kernel

needs_cc = pytest.mark.skipif(
    not _native.enabled(),
    reason="no C compiler (or TDL_NATIVE=0): the rules use the torch path",
)


def _both_paths(fn, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from trustworthy_dl.aggregation import _sortnet

    native = fn()
    with monkeypatch.context() as m:
        m.setattr(_sortnet, "_native", lambda plan, middle, X: None)
        torch_path = fn()
    return native, torch_path


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal values (NaN where the other has NaN: f = 0 keeps +inf and -inf rows)."""
    return a.dtype == b.dtype and bool(torch.equal(a.view(torch.int32), b.view(torch.int32)))


@needs_cc
def test_native_kernel_builds_here() -> None:
    # With a C compiler the fast path must not silently fall back to torch.
    from trustworthy_dl.aggregation import _sortnet

    wide = _native.MIN_COLUMNS
    plan = median_plan(4)
    assert _sortnet._native(plan, (1, 2), torch.zeros(4, wide)) is not None
    assert _sortnet._native(plan, (1, 2), torch.zeros(4, wide, dtype=torch.float64)) is None
    assert _sortnet._native(plan, (1, 2), torch.zeros(wide, 4).t()) is None  # columns not contiguous
    assert _sortnet._native(plan, (1, 2), torch.zeros(4, 8)) is None  # narrow: the torch path
    src = _native_sort.source([(0, 0, 1, 4), (1, 0, 1, 1)], (4, 1, 2, 3), 1, 2)
    assert "r4 = r0 < r1 ? r0 : r1;" in src and "r1 = r0 > r1 ? r0 : r1;" in src
    assert "(r1 + r2) * 0x1.0000000000000p-1f" in src


@needs_cc
@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 33])
def test_native_kernel_equals_torch_path_bitwise(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gen(n)
    D = 70_001  # several tiles, several blocks, ragged tail
    X = torch.randn(n, D, generator=g) * torch.logspace(-3, 3, D)
    if n > 2:
        X[0, ::7] = float("nan")
        X[1, ::11] = float("inf")
        X[2, 5::13] = -float("inf")
    (m1, s1, k1), (m2, s2, k2) = _both_paths(lambda: coordinate_median(Rows(X)), monkeypatch)
    assert (k1, k2) == ("native", "torch")
    assert _same(m1, m2) and torch.equal(s1, s2)
    for f in {0, (n - 1) // 2, max(0, n // 4)}:
        (t1, u1, _), (t2, u2, _) = _both_paths(lambda f=f: trimmed_mean_coordinates(Rows(X), f), monkeypatch)
        assert _same(t1, t2), f
        assert torch.equal(u1, u2), f


@needs_cc
def test_native_kernel_on_mixed_rows_and_strided_input(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gen(5)
    big = torch.randn(9, 90_000, generator=g)
    X = big[:, 1000:71_000]  # a view: row stride 90_000
    X[3, 17] = float("nan")
    C = torch.rand(6, 9, generator=g, dtype=torch.float64)
    C /= C.sum(1, keepdim=True)
    rows = Rows(X).mix(C, torch.full((6,), 1 / 6, dtype=torch.float64), "test")
    (m1, s1, k1), (m2, s2, _) = _both_paths(lambda: coordinate_median(rows), monkeypatch)
    assert k1 == "native" and _same(m1, m2) and torch.equal(s1, s2)
    (t1, _, _), (t2, _, _) = _both_paths(lambda: trimmed_mean_coordinates(Rows(X), 2), monkeypatch)
    assert _same(t1, t2)
    S = torch.nan_to_num(X.double(), nan=float("inf")).sort(0).values
    torch.testing.assert_close(t1.double(), S[2:7].mean(0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "name", ["krum", "multi_krum", "geometric_median", "centered_clip", "mda", "nnm+krum"]
)
def test_distance_rules_agree_on_native_and_torch_gram(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trustworthy_dl.aggregation import _gram, build_aggregator

    g = _gen(11)
    X = torch.randn(1, 1 << 16, generator=g) + torch.randn(9, 1 << 16, generator=g)
    X[7:] = -3 * X[:7].mean(0)  # two colluding outliers
    *pre, rule = name.split("+")

    def run() -> tuple[torch.Tensor, str]:
        res = build_aggregator(rule, f=2, pre=[{"name": p} for p in pre])(X)
        return res.value_D, res.info["kernel"]

    native, kernel = run()
    assert kernel == ("native" if _gram._native_gram(X, None) else "torch")  # says which path ran
    with monkeypatch.context() as m:
        m.setattr(_gram, "_native_gram", lambda X, E: False)
        reference, kernel = run()
    assert kernel == "torch"
    torch.testing.assert_close(native, reference, rtol=1e-5, atol=1e-6)


@needs_cc
@pytest.mark.parametrize(("n", "beta"), [(7, 3), (9, 5), (12, 4)])
def test_native_bulyan_equals_torch_path_bitwise(n: int, beta: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from trustworthy_dl.aggregation import _sortnet

    g = _gen(n + beta)
    D = 70_001
    X = torch.randn(n + 2, D, generator=g)
    X[1] = X[2]  # duplicate rows: tied windows must be averaged the same way
    X[3, ::5] = float("inf")
    X[4, 1::7] = float("nan")
    sel = torch.zeros(n + 2, dtype=torch.bool)
    sel[:n] = True
    native = bulyan_coordinates(Rows(X), sel, beta)
    assert _sortnet._native_bulyan(sort_plan(n), beta, Rows(X)) is not None
    with monkeypatch.context() as m:
        m.setattr(_sortnet, "_native_bulyan", lambda plan, beta, rows: None)
        reference = bulyan_coordinates(Rows(X), sel, beta)
    assert _same(native[0], reference[0])
    assert torch.equal(native[1], reference[1])


@needs_cc
def test_native_materialize_matches_the_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    from trustworthy_dl.aggregation import _rows

    g = _gen(21)
    X = torch.randn(9, 70_003, generator=g)
    X[8, 5] = float("nan")  # a far row that no mixture uses: it must not leak (0 * NaN)
    C = torch.rand(7, 9, generator=g, dtype=torch.float64)
    C[:, 8] = 0
    C[3] = C[1]  # identical mixtures give bitwise-identical rows
    C /= C.sum(1, keepdim=True)
    rows = Rows(X).mix(C, torch.full((7,), 1 / 7, dtype=torch.float64), "test")
    assert rows._materialize_native() is not None
    native = rows.materialize()
    with monkeypatch.context() as m:
        m.setattr(_rows.Rows, "_materialize_native", lambda self: None)
        reference = rows.materialize()
    assert torch.isfinite(native).all()
    torch.testing.assert_close(native, reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(native[3], native[1])
