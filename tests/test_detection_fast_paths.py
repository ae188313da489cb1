"""Stage 1's small-N fast paths give bit-identical results to the torch formulas they replace."""

from __future__ import annotations

import torch

from trustworthy_dl.security.base import MAD_SCALE, robust_z
from trustworthy_dl.security.detector import Stage1Detector
from trustworthy_dl.security.mandera import all_rows_equal, duplicated_rows


def _robust_z_torch(values_N, floor, population_N=None):  # the formula robust_z documents
    pop = torch.unique(values_N if population_N is None else values_N[population_N])
    med = pop.median()
    return (values_N - med) / torch.clamp(MAD_SCALE * (pop - med).abs().median(), min=floor)


def test_robust_z_numpy_path_is_bitwise_the_torch_formula():
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(3, 70, (), generator=g))
        v = torch.randn(n, generator=g, dtype=torch.float64) * 10 ** float(
            torch.randint(-6, 4, (), generator=g)
        )
        if trial % 3 == 0:  # repeated values (colluding rows) and signed zeros
            v[: n // 3] = v[n - 1]
            v[n // 2] = -0.0
        pop = torch.rand(n, generator=g) < 0.8 if trial % 2 else None
        if pop is not None and not pop.any():
            pop[0] = True
        floor = [0.0, 1e-3, 0.5][trial % 3]
        ref = _robust_z_torch(v, floor, pop)
        for side, want in (("both", ref.abs()), ("high", ref.clamp(min=0)), ("low", (-ref).clamp(min=0))):
            got = robust_z(v, floor=floor, side=side, population_N=pop)
            assert got.dtype == torch.float64
            assert torch.allclose(got, want, rtol=0, atol=0, equal_nan=True), (trial, side)


def test_robust_z_non_finite_population_keeps_the_torch_semantics():
    v = torch.tensor([1.0, 2.0, float("inf"), 3.0], dtype=torch.float64)
    assert torch.equal(robust_z(v, floor=0.1).isnan(), _robust_z_torch(v, 0.1).abs().isnan())


def test_duplicated_rows_and_all_equal_match_unique():
    g = torch.Generator().manual_seed(1)
    for trial in range(200):
        n = int(torch.randint(1, 40, (), generator=g))
        f = torch.randn(n, 2, generator=g, dtype=torch.float64)
        if trial % 2:
            f[torch.randint(n, (n // 2,), generator=g)] = f[0].clone()
        if trial % 7 == 0:
            f[:] = f[0].clone()
        _, inv, cnt = torch.unique(torch.round(f, decimals=9), dim=0, return_inverse=True, return_counts=True)
        assert torch.equal(duplicated_rows(f), cnt[inv] > 1)
        assert all_rows_equal(f) == (len(torch.unique(f, dim=0)) < 2)


def test_detector_diagnostics_only_add_logs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 500, generator=g)
    x[:3] *= -3
    quiet = Stage1Detector().inspect(x, generator=torch.Generator().manual_seed(0))
    loud = Stage1Detector(diagnostics=True).inspect(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quiet.flags_N, loud.flags_N) and torch.equal(quiet.scores_N, loud.scores_N)
    assert "scores" not in quiet.info and set(loud.info["scores"]) == {"mandera", "distance"}
    assert len(loud.info["methods"]["mandera"]["features"]) == 16
    assert len(loud.info["methods"]["distance"]["z_cosine"]) == 16


def test_native_two_means_steps_match_the_numpy_steps(monkeypatch):
    """The native Lloyd kernel and the numpy steps split alike (up to which group is called 1)
    with the same within-group sum of squares (with tied points, possibly another split of that
    same inertia); without a compiler, numpy runs."""
    import numpy as np
    import pytest

    from trustworthy_dl.security import kmeans2

    kernel = kmeans2._lloyd_kernel()
    if kernel is None:
        pytest.skip("no C compiler: the numpy steps are the only path")
    rng = np.random.default_rng(0)
    for i in range(400):
        n, f = int(rng.integers(3, 120)), int(rng.integers(1, 6))
        p = rng.standard_normal((n, f))
        p[: n // 4] += 3 * rng.random(f)
        tied = i % 3 == 0
        if tied:
            p = np.round(p, 1)  # ties: another split of exactly the same inertia may be kept
        c = p[rng.integers(0, n, (5, 2))]
        got, w = kernel(p, c, 30)
        want, w_np = kmeans2._lloyd_numpy(p[None], c[None], 30)
        same = np.array_equal(got if got[0] == 0 else 1 - got, want[0] if want[0][0] == 0 else 1 - want[0])
        assert same or tied
        assert w == pytest.approx(float(w_np[0]), rel=1e-12, abs=1e-12)
    pts = rng.standard_normal((20, 2))
    fast = kmeans2.two_means_numpy(pts, starts=4, seed=1)
    monkeypatch.setattr(kmeans2, "_lloyd_kernel", lambda: None)
    slow = kmeans2.two_means_numpy(pts, starts=4, seed=1)
    assert np.array_equal(fast[0], slow[0]) and fast[1] == pytest.approx(slow[1], rel=1e-12)
    with pytest.raises(ValueError, match="features"):
        kernel(rng.standard_normal((5, 40)), rng.standard_normal((2, 2, 40)), 30)


def test_cached_kmeanspp_draws_pick_the_torch_starts():
    """A round's k-means++ starts come from draws cached per (seed, N, starts): the same centres as
    torch's randint + multinomial on a generator seeded alike (also a guard should torch change
    how multinomial samples)."""
    import numpy as np

    from trustworthy_dl.security import kmeans2

    rng = np.random.default_rng(1)
    for i in range(300):
        n, f, seed = int(rng.integers(3, 120)), int(rng.integers(1, 6)), int(rng.integers(0, 5))
        p = rng.standard_normal((n, f)) * 10.0 ** float(rng.integers(-3, 3))
        if i % 4 == 0:
            p[: n // 2] = p[0]  # coincident points: zero weights but one
        want = kmeans2._kmeanspp_pairs(torch.from_numpy(p)[None], 4, torch.Generator().manual_seed(seed))[0]
        assert np.array_equal(kmeans2._kmeanspp_pairs_numpy(p, 4, seed), want.numpy())


def test_small_helpers_take_any_tensor():
    """The numpy fast paths of the public helpers fall back for tensors numpy cannot take."""
    from trustworthy_dl.security.mandera import two_means

    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]], dtype=torch.float64)
    assert two_means(x.clone().requires_grad_())[0].tolist() == [0, 0, 1, 1]
    assert not all_rows_equal(x.bfloat16()) and all_rows_equal(torch.ones(3, 2, dtype=torch.bfloat16))
    assert duplicated_rows(torch.cat([x, x[:1]]).bfloat16()).tolist() == [True, False, False, False, True]
