"""Building the native kernels: per-kernel flags, the private bounded cache, portable x86 levels,
and the opt-in torch.compile path of the sorting networks (each against the torch path).

The aarch64 builds are in ``test_kernels_aarch64.py``; the kernels' arithmetic in
``test_aggregation_kernels.py``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trustworthy_dl.aggregation import _native
from trustworthy_dl.aggregation._rows import Rows
from trustworthy_dl.aggregation._sortnet import (
    coordinate_median,
    median_plan,
    trimmed_mean_coordinates,
    trimmed_plan,
)

needs_cc = pytest.mark.skipif(
    not _native.enabled(),
    reason="no C compiler (or TDL_NATIVE=0): the rules use the torch path",
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@needs_cc
def test_native_build_passes_each_kernels_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rounding of the sorting kernels depends on their flags (-ffp-contract=off): a kernel
    # built without them must not exist. This source compiles only when its own flag arrives.
    monkeypatch.setenv("TDL_CACHE_DIR", str(tmp_path))
    src = "#ifndef TDL_FLAG_CHECK\n#error per-kernel flags were not passed\n#endif\nint tdl_ok(void) { return 7; }\n"
    lib = _native._build(src, "flagcheck", ("-DTDL_FLAG_CHECK",))
    assert lib is not None and lib.tdl_ok() == 7
    cache = tmp_path / f"kernels-u{os.getuid()}"
    assert list(cache.glob("flagcheck-*.so"))
    assert cache.stat().st_mode & 0o777 == 0o700  # a private cache


@needs_cc
def test_a_cached_library_others_can_write_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TDL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_warned", False)
    src = "int tdl_ok(void) { return 7; }\n"
    assert _native._build(src, "owncheck", ()) is not None
    (lib,) = (tmp_path / f"kernels-u{os.getuid()}").glob("owncheck-*.so")
    lib.chmod(0o777)  # anyone could have replaced it
    with pytest.warns(UserWarning, match="refusing to load"):
        assert _native._build(src, "owncheck", ()) is None
    (tmp_path / f"kernels-u{os.getuid()}").chmod(0o777)
    monkeypatch.setattr(_native, "_warned", False)
    with pytest.warns(UserWarning, match="not private to this user"):
        assert _native._build(src, "owncheck2", ()) is None


@needs_cc
def test_the_cache_keeps_the_newest_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "CACHE_ENTRIES", 2)
    for k in range(4):
        assert _native._build(f"int tdl_k{k}(void) {{ return {k}; }}\n", f"prune{k}", ()) is not None
    left = sorted(p.name.split("-")[0] for p in (tmp_path / f"kernels-u{os.getuid()}").glob("*.so"))
    assert left == ["prune2", "prune3"]


def _run_script(script: str, out: Path, **env: str) -> dict:
    """Run ``script`` (it saves its results to argv[1]) in a fresh interpreter with ``env`` set
    (our UserWarnings are errors there) and load what it saved."""
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script, str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


_PORTABLE_CHECK = """
import sys, torch
from trustworthy_dl.aggregation import get_aggregator
g = torch.Generator().manual_seed(3)
X = torch.randn(9, 70_001, generator=g)
X[4] *= 20
res = {r: get_aggregator(r, f=2)(X) for r in ("median", "trimmed_mean", "krum", "geometric_median")}
from trustworthy_dl.security.ranks import signed_rank_sums
X[:, :999] = X[:, :999].round()  # ties
out = {r: v.value_D for r, v in res.items()} | {"kernel": res["median"].info.get("kernel")}
torch.save(out | {"rank_sums": torch.stack(signed_rank_sums(X[:, :20_000]))}, sys.argv[1])
"""


@needs_cc
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 march levels")
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3"])
def test_kernels_build_and_agree_on_portable_x86_levels(tmp_path: Path, march: str) -> None:
    """Every kernel compiles for baseline x86-64 and AVX2 (no AVX-512 asm or intrinsics outside
    their guards) and gives the torch path's results: bitwise for the sorting networks, allclose
    for the Gram-based rules."""
    out = {
        native: _run_script(
            _PORTABLE_CHECK,
            tmp_path / f"out-{native}.pt",
            TDL_NATIVE=native,
            TDL_NATIVE_MARCH=march,
            TDL_CACHE_DIR=str(tmp_path),
            OMP_NUM_THREADS="1",
        )
        for native in ("1", "0")
    }
    assert out["1"]["kernel"] == "native" and out["0"]["kernel"] != "native"
    for r in ("median", "trimmed_mean", "rank_sums"):  # rank sums: exact integers either way
        assert torch.equal(out["1"][r], out["0"][r]), r
    for r in ("krum", "geometric_median"):
        torch.testing.assert_close(out["1"][r], out["0"][r], rtol=1e-5, atol=1e-6)
    built = [p.name for p in (tmp_path / f"kernels-u{os.getuid()}").glob("*.so")]
    assert {n.split("-")[0] for n in built} >= {"centred_gram", "middle_mean", "rank_sums"}


_COMPILED_CHECK = """
import sys, torch
from trustworthy_dl.aggregation import get_aggregator
X = torch.randn(5, 3001, generator=torch.Generator().manual_seed(5))
X[1, 7], X[2, 9], X[3, 11] = float("nan"), float("inf"), -float("inf")
res = {r: get_aggregator(r, f=1)(X) for r in ("median", "trimmed_mean")}
torch.save({r: (v.value_D, v.weights_N, v.info["kernel"]) for r, v in res.items()}, sys.argv[1])
"""


@pytest.mark.slow
def test_compiled_sorting_networks_equal_the_torch_path_bitwise(tmp_path: Path) -> None:
    """TDL_COMPILE=1 runs median and trimmed mean through torch.compile: same values and shares."""
    ind = str(tmp_path / "ind")
    out = {
        flag: _run_script(
            _COMPILED_CHECK,
            tmp_path / f"out-{flag}.pt",
            TDL_COMPILE=flag,
            TDL_NATIVE="0",
            TORCHINDUCTOR_CACHE_DIR=ind,
        )
        for flag in ("1", "0")
    }
    for rule in ("median", "trimmed_mean"):
        (v1, w1, k1), (v0, w0, k0) = out["1"][rule], out["0"][rule]
        assert (k1, k0) == ("compiled", "torch")
        assert torch.equal(v1, v0) and torch.equal(w1, w0), rule


def test_compiled_networks_are_one_code_object_per_plan_and_exact_when_run_eagerly() -> None:
    """torch.compile keeps 8 graphs per code object: each plan gets its own generated function
    (a shared closure stopped compiling after eight plans). Run eagerly they give the torch path's values."""
    from trustworthy_dl.aggregation import _compiled

    runs = []
    g = _gen(5)
    for n in range(3, 14):
        for plan, lo, hi, f in [
            (median_plan(n), (n - 1) // 2, n // 2, None),
            (trimmed_plan(n, 1), 1, n - 2, 1),
        ]:
            run = _compiled._network(plan.ops, plan.wire_row, lo, hi)
            runs.append(run)
            X = torch.randn(n, 777, generator=g)
            X[0, 3], X[1, 4] = float("nan"), -float("inf")
            want = coordinate_median(Rows(X))[0] if f is None else trimmed_mean_coordinates(Rows(X), f)[0]
            assert torch.equal(run(X), want), (n, f)
    assert len({id(r.__code__) for r in runs}) == len(runs) == 2 * 11  # distinct code objects
