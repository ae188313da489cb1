"""Speed of every aggregator on an (N, D) float32 stack, against ``mean`` and the ByzFL library.

For each N and D: median wall time of each rule, effective bandwidth (N * D * 4 bytes / time), the
ratio to ``mean`` on the same input (timed alternately with the rule, so that both see the same
machine state), and, where ByzFL has the rule, ByzFL's time on the same input
with the same parameters, and our speed-up. Writes ``benchmarks/results/aggregators.json`` and
``aggregators.md`` (``--out`` to change).

    python benchmarks/aggregators.py                                  # full grid (many minutes)
    python benchmarks/aggregators.py --nodes 16 --dims 1e6 --rules mean median krum
    python benchmarks/aggregators.py --no-byzfl --reps 3

ByzFL (``pip install byzfl --no-deps``) is optional: ``import byzfl`` pulls in torchvision and
seaborn, which are stubbed here when missing; without byzfl the column says so. Parametrised rules
run with the same parameters on both sides (see ``SPECS``): geometric median with ByzFL's defaults
(T=3, nu=0.1; ours costs the same for any T, the iterations run on the Gram matrix), CenteredClip
with tau=100 and L=1 (ByzFL's default) or L=10. ByzFL runs are skipped where they would need more
than ``--byzfl-mem-gb`` of temporaries (its NNM builds an (N, N - f, D) tensor) or enumerate more
than 1e5 subsets (its MDA).

Data: rows ``g + 0.5 * noise`` (a shared direction plus per-node noise, like gradients);
``f = max(1, (N - 3) // 4)``, the largest f that Bulyan tolerates. ``nnm`` is the pre-aggregator
alone with its (N, D) output materialised (as ByzFL returns it); ``nnm+krum`` etc. are pipelines,
where NNM's output is never materialised. ``--thp`` sets ``THP_MEM_ALLOC_ENABLE=1`` before torch
loads (huge pages make the 40 MB-1 GB output allocations cheaper, for both libraries).
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

# name -> (our aggregator, its params, pre-aggregators, ByzFL class, ByzFL kwargs or None)
SPECS: dict[str, tuple[str, dict[str, Any], list[str], str | None, dict[str, Any] | None]] = {
    "mean": ("mean", {}, [], "Average", {}),
    "median": ("median", {}, [], "Median", {}),
    "trimmed_mean": ("trimmed_mean", {}, [], "TrMean", {"f": None}),
    "geometric_median": (
        "geometric_median",
        {"iterations": 3, "nu": 0.1, "tol": 0.0},
        [],
        "GeometricMedian",
        {},
    ),
    "krum": ("krum", {}, [], "Krum", {"f": None}),
    "multi_krum": ("multi_krum", {}, [], "MultiKrum", {"f": None}),
    "bulyan": ("bulyan", {}, [], None, None),
    "centered_clip": (
        "centered_clip",
        {"tau": 100.0, "iterations": 1, "tol": 0.0},
        [],
        "CenteredClipping",
        {},
    ),
    "centered_clip_L10": (
        "centered_clip",
        {"tau": 100.0, "iterations": 10, "tol": 0.0},
        [],
        "CenteredClipping",
        {"L": 10},
    ),
    "mda": ("mda", {}, [], "MDA", {"f": None}),
    "dnc": ("dnc", {}, [], None, None),
    "signguard": ("signguard", {}, [], None, None),
    "nnm": ("nnm", {}, [], "NNM", {"f": None}),
    "nnm+krum": ("krum", {}, ["nnm"], None, None),
    "bucketing+median": ("median", {}, ["bucketing"], None, None),
    "arc+trimmed_mean": ("trimmed_mean", {}, ["arc"], None, None),
}
RULES = list(SPECS)


class _Stub(types.ModuleType):
    """A stand-in module: any attribute is another stub (byzfl only touches these at import)."""

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
    from trustworthy_dl.aggregation import build_aggregator

    agg, params, pre, _, _ = SPECS[name]
    if agg == "nnm":  # the pre-aggregator alone, with its (N, D) output materialised
        from trustworthy_dl.aggregation import Rows
        from trustworthy_dl.aggregation.nnm import nnm

        return lambda X: nnm(Rows(X), f=f).materialize()
    return build_aggregator(agg, f=f, params=params, pre=[{"name": p} for p in pre])


def _byzfl(
    byzfl: Any, name: str, n: int, f: int, d: int, mem_gb: float, off: bool = False
) -> tuple[Any, str]:
    """(callable or None, note)."""
    _, _, _, cls, kwargs = SPECS[name]
    if cls is None or kwargs is None:
        return None, "not in ByzFL"
    if byzfl is None:
        return None, "byzfl not run (--no-byzfl)" if off else "byzfl not installed"
    gb = n * d * 4 / 1e9
    temporaries = {"NNM": (n - f) * gb, "Median": 3 * gb, "TrMean": 3 * gb}.get(cls, 2 * gb)
    if temporaries > mem_gb:
        return None, f"skipped: needs ~{temporaries:.0f} GB"
    if cls == "MDA" and math.comb(n, f) > 100_000:
        return None, f"skipped: C({n},{f}) subsets"
    kw = {k: (f if v is None else v) for k, v in kwargs.items()}
    if cls == "CenteredClipping":
        kw["tau"] = 100.0
    return getattr(byzfl, cls)(**kw), ""


def _time(fn: Any, X: Any, reps: int) -> float:
    fn(X)  # warm-up (caches, lazy imports, stateful centres)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(X)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _time_vs(base: Any, fn: Any, X: Any, reps: int) -> tuple[float, float]:
    """Median times of ``base`` and ``fn``, run alternately so that both see the same machine state
    (other jobs, memory fragmentation left by ByzFL's temporaries, turbo): the ratio is robust."""
    base(X)
    fn(X)
    tb, tf = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        base(X)
        t1 = time.perf_counter()
        fn(X)
        t2 = time.perf_counter()
        tb.append(t1 - t0)
        tf.append(t2 - t1)
    return statistics.median(tb), statistics.median(tf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--dims", type=float, nargs="+", default=[1e6, 1.1e7])
    ap.add_argument("--rules", nargs="+", default=RULES, choices=RULES, metavar="RULE", help=" ".join(RULES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--byzfl-reps", type=int, default=3)
    ap.add_argument("--no-byzfl", action="store_true")
    ap.add_argument("--byzfl-mem-gb", type=float, default=6.0)
    ap.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 before torch loads")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS / "aggregators"), help="output path without extension")
    args = ap.parse_args()
    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
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
            mean_fn = _ours("mean", f)
            for name in rules:
                rec: dict[str, Any] = {"rule": name, "n": n, "d": d, "f": f}
                try:
                    if name == "mean":
                        t = t_mean = _time(mean_fn, X, args.reps)
                    else:
                        t_mean, t = _time_vs(mean_fn, _ours(name, f), X, args.reps)
                except Exception as e:  # report, keep going
                    rec["error"] = f"{type(e).__name__}: {e}"
                    print(f"{name:18s} N={n:3d} D={d:.1e}  ERROR {rec['error']}", flush=True)
                    records.append(rec)
                    continue
                rec.update(seconds=t, gbps=n * d * 4 / t / 1e9, mean_seconds=t_mean, vs_mean=t / t_mean)
                bz, note = _byzfl(byzfl, name, n, f, d, args.byzfl_mem_gb, args.no_byzfl)
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
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "thp": bool(args.thp)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": records}, indent=1))
    out.with_suffix(".md").write_text(_markdown(records, meta))
    print(f"# wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _line(r: dict[str, Any]) -> str:
    bz = f"byzfl {r['byzfl_seconds']:.3f}s x{r['speedup']:.1f}" if "speedup" in r else r.get("byzfl_note", "")
    vs = f"{r['vs_mean']:.2f}x mean" if r.get("vs_mean") else ""
    return f"{r['rule']:18s} N={r['n']:3d} D={r['d']:.1e}  {r['seconds']:.4f}s {r['gbps']:6.1f} GB/s {vs:>12s}  {bz}"


def _markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Aggregator speed: torch {meta['torch']}, {meta['threads']} CPU threads, float32, median of runs"
        f"{', THP on' if meta['thp'] else ''}. GB/s = N*D*4 bytes / time; x mean = time / time of `mean`"
        " on the same input; ByzFL = the same rule and parameters in ByzFL 0.0.11 on the same input.",
        "",
        "| rule | N | D | time (s) | GB/s | x mean | ByzFL (s) | speed-up vs ByzFL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['rule']} | {r['n']} | {r['d']:.1e} | error | | | | {r['error']} |")
            continue
        bz = f"{r['byzfl_seconds']:.3f}" if "byzfl_seconds" in r else r.get("byzfl_note", "")
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else ""
        vs = f"{r['vs_mean']:.2f}" if r.get("vs_mean") else ""
        lines.append(
            f"| {r['rule']} | {r['n']} | {r['d']:.1e} | {r['seconds']:.4f} | {r['gbps']:.1f} | {vs} | {bz} | {sp} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
