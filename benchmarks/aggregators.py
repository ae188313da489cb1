"""Speed of every aggregator on an (N, D) float32 stack, against ``mean`` and the ByzFL library.

For each N and D: median wall time of each rule, effective bandwidth (N * D * 4 bytes / time), the
ratio to ``mean`` on the same input, and, where ByzFL has the rule, ByzFL's time on the same input
and our speed-up. Writes ``benchmarks/results/aggregators.json`` and ``aggregators.md``.

    python benchmarks/aggregators.py                                  # full grid (minutes)
    python benchmarks/aggregators.py --nodes 16 --dims 1e6 --rules mean median krum
    python benchmarks/aggregators.py --no-byzfl --reps 3

ByzFL (``pip install byzfl --no-deps``) is optional; ``import byzfl`` pulls in torchvision, which
is stubbed here if missing. Its rules run with their defaults (GeometricMedian: T=3, nu=0.1;
CenteredClipping: L=1, tau=100), ours with ours (geometric median and CenteredClip iterate up to
100 times, which costs us nothing extra: the iterations run on the Gram matrix). ByzFL runs are
skipped where they would need more than ``--byzfl-mem-gb`` of temporaries (its NNM builds an
(N, N - f, D) tensor) or enumerate more than 1e5 subsets (its MDA).

The data: rows ``g + 0.5 * noise`` (a shared direction plus per-node noise, like gradients), so
distances are small against norms, the hard case for Gram-matrix accuracy. ``f = max(1, (N-3)//4)``
(the largest f that Bulyan tolerates). ``THP_MEM_ALLOC_ENABLE=1`` is set before torch loads
(transparent huge pages for large allocations; ``--no-thp`` to disable): output allocations of
40 MB otherwise cost more in page faults than the work itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

RULES = [
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "bulyan",
    "centered_clip",
    "mda",
    "dnc",
    "signguard",
    "nnm",
    "nnm+krum",
    "bucketing+median",
    "arc+trimmed_mean",
]


class _Stub(types.ModuleType):
    """A stand-in module: any attribute is another stub (byzfl only touches torchvision at import)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Stub(f"{self.__name__}.{name}")
        setattr(self, name, sub)
        return sub

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


_STUBBABLE = ("torchvision", "seaborn")  # imported by byzfl's training / plotting code, unused here


def _import_byzfl() -> Any:
    """``byzfl`` or None. Missing torchvision / seaborn are stubbed (``pip install byzfl --no-deps``)."""
    for _ in range(len(_STUBBABLE) + 1):
        try:
            import byzfl

            return byzfl
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root not in _STUBBABLE or root in sys.modules:
                print(f"# ByzFL not importable ({e}); its column is skipped", file=sys.stderr)
                return None
            for mod in [m for m in sys.modules if m == "byzfl" or m.startswith("byzfl.")]:
                del sys.modules[mod]
            stub = _Stub(root)
            sys.modules[root] = stub
            for sub in ("datasets", "transforms", "models"):
                sys.modules[f"{root}.{sub}"] = getattr(stub, sub)
        except Exception as e:  # any other import problem: skip the column
            print(f"# ByzFL not importable ({type(e).__name__}: {e}); its column is skipped", file=sys.stderr)
            return None
    return None


def _ours(name: str, f: int) -> Any:
    from trustworthy_dl.aggregation import build_aggregator, get_aggregator

    if name == "nnm":  # the pre-aggregator alone, with its (N, D) output materialised
        from trustworthy_dl.aggregation._rows import Rows
        from trustworthy_dl.aggregation.nnm import nnm

        def run(X: Any) -> Any:
            rows = nnm(Rows(X), f=f)
            return rows.materialize()

        return run
    if "+" in name:
        *pre, agg = name.split("+")
        return build_aggregator(agg, f=f, pre=[{"name": p} for p in pre])
    return get_aggregator(name, f=f)


def _byzfl(byzfl: Any, name: str, n: int, f: int, d: int, mem_gb: float) -> tuple[Any, str]:
    """(callable or None, note)."""
    if byzfl is None:
        return None, "byzfl not installed"
    gb = n * d * 4 / 1e9
    makers: dict[str, tuple[Any, float]] = {
        # name: (factory, GB of temporaries beyond the input)
        "mean": (lambda: byzfl.Average(), gb),
        "median": (lambda: byzfl.Median(), 3 * gb),
        "trimmed_mean": (lambda: byzfl.TrMean(f=f), 3 * gb),
        "geometric_median": (lambda: byzfl.GeometricMedian(), 2 * gb),
        "krum": (lambda: byzfl.Krum(f=f), gb),
        "multi_krum": (lambda: byzfl.MultiKrum(f=f), 2 * gb),
        "centered_clip": (lambda: byzfl.CenteredClipping(), 2 * gb),
        "mda": (lambda: byzfl.MDA(f=f), gb),
        "nnm": (lambda: byzfl.NNM(f=f), (n - f) * gb),
    }
    if name not in makers:
        return None, "not in ByzFL"
    make, need = makers[name]
    if need > mem_gb:
        return None, f"skipped: needs ~{need:.0f} GB"
    if name == "mda" and math.comb(n, f) > 100_000:
        return None, f"skipped: C({n},{f}) subsets"
    return make(), ""


def _time(fn: Any, X: Any, reps: int) -> float:
    fn(X)  # warm-up (also fills caches and lazy imports)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(X)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--dims", type=float, nargs="+", default=[1e6, 1.1e7])
    ap.add_argument("--rules", nargs="+", default=RULES, help=f"default: {' '.join(RULES)}")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--byzfl-reps", type=int, default=3)
    ap.add_argument("--no-byzfl", action="store_true")
    ap.add_argument("--byzfl-mem-gb", type=float, default=6.0)
    ap.add_argument("--no-thp", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS / "aggregators"), help="output path without extension")
    args = ap.parse_args()
    if not args.no_thp:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rules = list(args.rules)
    if "mean" not in rules:
        rules.insert(0, "mean")
    byzfl = None if args.no_byzfl else _import_byzfl()
    records: list[dict[str, Any]] = []
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, byzfl: {byzfl is not None}")
    for d_f in args.dims:
        d = int(d_f)
        for n in args.nodes:
            f = max(1, (n - 3) // 4)
            gen = torch.Generator().manual_seed(0)
            X = torch.randn(1, d, generator=gen) + 0.5 * torch.randn(n, d, generator=gen)
            t_mean = None
            for name in rules:
                rec: dict[str, Any] = {"rule": name, "n": n, "d": d, "f": f}
                try:
                    t = _time(_ours(name, f), X, args.reps)
                except Exception as e:  # report, keep going
                    rec["error"] = f"{type(e).__name__}: {e}"
                    print(f"{name:18s} N={n:3d} D={d:.1e}  ERROR {rec['error']}", flush=True)
                    records.append(rec)
                    continue
                if name == "mean":
                    t_mean = t
                rec.update(seconds=t, gbps=n * d * 4 / t / 1e9, vs_mean=t / t_mean if t_mean else None)
                bz, note = _byzfl(byzfl, name, n, f, d, args.byzfl_mem_gb)
                if bz is not None:
                    try:
                        tb = _time(bz, X, args.byzfl_reps)
                        rec.update(byzfl_seconds=tb, speedup=tb / t)
                    except Exception as e:
                        note = f"byzfl error: {type(e).__name__}"
                if note:
                    rec["byzfl_note"] = note
                records.append(rec)
                print(_line(rec), flush=True)
            del X
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "thp": not args.no_thp}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": records}, indent=1))
    out.with_suffix(".md").write_text(_markdown(records, meta))
    print(f"# wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _line(r: dict[str, Any]) -> str:
    bz = f"byzfl {r['byzfl_seconds']:.3f}s x{r['speedup']:.0f}" if "speedup" in r else r.get("byzfl_note", "")
    vs = f"{r['vs_mean']:.2f}x mean" if r.get("vs_mean") else ""
    return f"{r['rule']:18s} N={r['n']:3d} D={r['d']:.1e}  {r['seconds']:.4f}s {r['gbps']:6.1f} GB/s {vs:>12s}  {bz}"


def _markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Aggregator speed (torch {meta['torch']}, {meta['threads']} CPU threads, float32, median of runs).",
        "GB/s = N*D*4 bytes / time; x mean = time / time of `mean` on the same input; "
        "ByzFL = the same rule in ByzFL 0.0.11 on the same input.",
        "",
        "| rule | N | D | time (s) | GB/s | x mean | ByzFL (s) | speed-up vs ByzFL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['rule']} | {r['n']} | {r['d']:.1e} | error | | | | {r['error']} |")
            continue
        bz = f"{r['byzfl_seconds']:.3f}" if "byzfl_seconds" in r else r.get("byzfl_note", "")
        sp = f"{r['speedup']:.0f}x" if "speedup" in r else ""
        vs = f"{r['vs_mean']:.2f}" if r.get("vs_mean") else ""
        lines.append(
            f"| {r['rule']} | {r['n']} | {r['d']:.1e} | {r['seconds']:.4f} | {r['gbps']:.1f} | {vs} | {bz} | {sp} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
