"""Median and trimmed mean on three paths: eager torch, the native C kernel, torch.compile.

Issue 10, section 4: the sorting-network rules through ``torch.compile`` (``aggregation/_compiled.py``,
``TDL_COMPILE=1``) next to the native kernel (``_native_sort.py``, the CPU default) and the eager
torch path (``TDL_NATIVE=0``). Each path runs in its own process (the paths are chosen per
process by environment variables); per (rule, N, D): the first call (for ``compiled``: Inductor's
compile, cold unless its on-disk cache already holds the graph), then the median of ``--reps``
calls, and whether the values are bitwise equal to the eager path's. Rows ``g + 0.5 noise``, f =
N // 4 for the trimmed mean.

    python benchmarks/compiled_kernels.py      # table; writes benchmarks/results/compiled_kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ENV = {
    "torch": {"TDL_NATIVE": "0", "TDL_COMPILE": "0"},
    "native": {"TDL_COMPILE": "0"},
    "compiled": {"TDL_COMPILE": "1"},
}


def worker(rule: str, n: int, d: int, reps: int, out: str) -> None:
    import torch

    from trustworthy_dl.aggregation import get_aggregator

    g = torch.Generator().manual_seed(n * 7 + d)
    X = torch.randn(d, generator=g) + 0.5 * torch.randn(n, d, generator=g)
    agg = get_aggregator(rule, f=n // 4)
    t0 = time.perf_counter()
    res = agg(X)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        agg(X)
        times.append(time.perf_counter() - t0)
    torch.save({"value": res.value_D, "kernel": res.info.get("kernel"), "first_s": first,
                "median_s": statistics.median(times)}, out)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default="median,trimmed_mean")
    ap.add_argument("--nodes", default="16,64")
    ap.add_argument("--dims", default="1e6,1e7")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--worker", nargs=4, metavar=("RULE", "N", "D", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        rule, n, d, out = args.worker
        worker(rule, int(n), int(d), args.reps, out)
        return
    import torch

    rows = []
    tmp = RESULTS / "_compiled_tmp.pt"
    RESULTS.mkdir(exist_ok=True)
    for rule in args.rules.split(","):
        for n in (int(v) for v in args.nodes.split(",")):
            for d in (int(float(v)) for v in args.dims.split(",")):
                got = {}
                for path, env in ENV.items():
                    cmd = [
                        sys.executable,
                        __file__,
                        "--reps",
                        str(args.reps),
                        "--worker",
                        rule,
                        str(n),
                        str(d),
                        str(tmp),
                    ]
                    subprocess.run(cmd, env={**os.environ, **env}, check=True)
                    got[path] = torch.load(tmp)
                tmp.unlink()
                row = {"rule": rule, "num_nodes": n, "dim": d}
                for path, r in got.items():
                    row[f"{path} ms"] = round(r["median_s"] * 1e3, 2)
                    row[f"{path} first s"] = round(r["first_s"], 2)
                    row[f"{path} kernel"] = r["kernel"]
                    same_bits = torch.equal(
                        r["value"].view(torch.int32), got["torch"]["value"].view(torch.int32)
                    )
                    row[f"{path} bitwise = torch"] = bool(same_bits)  # -0.0 != 0.0, NaN payloads too
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = ["rule", "num_nodes", "dim", "torch ms", "native ms", "compiled ms", "compiled first s",
            "native bitwise = torch", "compiled bitwise = torch"]  # fmt: skip
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (RESULTS / "compiled_kernels.json").write_text(json.dumps({"reps": args.reps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
