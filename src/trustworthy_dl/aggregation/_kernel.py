"""Native kernels for the coordinate-wise rules: a sorting-network plan compiled to straight-line C.

In torch, each comparator of a plan (``_sortnet``) is one op over a column block, so the blocks
must be megabytes wide to amortise the dispatch, and every op streams its rows through the cache.
Here the whole plan becomes the body of one loop over the columns: the M values of a column live in
local variables (vector registers once the compiler vectorises the loop across columns), the
comparators are register min / max, and the data is read from memory once. Measured in
``benchmarks/aggregators.py``.

Same arithmetic as the torch path, so the results are bitwise equal (tests check): NaN -> +inf on
load; ``min(a, b) = a < b ? a : b`` and ``max(a, b) = a > b ? a : b`` as ATen's vectorised
minimum / maximum; the middle wires summed left to right, then times ``1/k`` rounded to float32.

Build: the C source is generated per plan and compiled on first use with ``$CC`` (default ``cc``)
``-O3 -march=native`` into ``$TDL_CACHE_DIR`` (default ``~/.cache/trustworthy_dl/kernels``), keyed
by source, flags and CPU; concurrent builds are safe (atomic rename). With no compiler, or
``TDL_NATIVE=0``, the rules use the torch path (``AggResult.info["kernel"]`` says which ran). The
library is plain C called through ctypes, which releases the GIL: column chunks run in parallel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MAX_ROWS", "MIN_COLUMNS", "enabled", "middle_mean_kernel", "source"]

#: Plans over more rows than this stay on the torch path (the straight-line body grows as M log^2 M).
MAX_ROWS = 128
#: Inputs narrower than this stay on the torch path (fast enough there; no compile for small tests).
MIN_COLUMNS = 1 << 16

_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-std=c11")

_lock = threading.Lock()
_kernels: dict[str, Callable[..., int] | None] = {}
_warned = False

Op = tuple[int, int, int, int]  # (0 = min / 1 = max, input row, input row, output row)


def enabled() -> bool:
    """Native kernels are allowed (``TDL_NATIVE`` is not "0") and a C compiler is on the PATH."""
    return os.environ.get("TDL_NATIVE", "1") != "0" and shutil.which(os.environ.get("CC", "cc")) is not None


def source(ops: Sequence[Op], wire_row: Sequence[int], lo: int, hi: int) -> str:
    """C source of ``out[c] = mean(wires lo..hi)`` after the comparator program, for each column c."""
    m = len(wire_row)
    k = hi - lo + 1
    scale = float(torch.tensor(1.0 / k, dtype=torch.float32))  # as torch casts the Python scalar
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "void tdl_middle_mean(const float *restrict X, int64_t ld, int64_t start, int64_t stop,"
        " float *restrict out) {",
        "  for (int64_t c = start; c < stop; c++) {",
    ]
    lines += [f"    float r{i} = X[{i} * ld + c]; r{i} = r{i} != r{i} ? INFINITY : r{i};" for i in range(m)]
    if any(o == m for _, _, _, o in ops):
        lines.append(f"    float r{m};")
    for kind, x, y, o in ops:
        cmp = "<" if kind == 0 else ">"
        lines.append(f"    r{o} = r{x} {cmp} r{y} ? r{x} : r{y};")
    mid = [f"r{wire_row[w]}" for w in range(lo, hi + 1)]
    if k == 1:
        lines.append(f"    out[c] = {mid[0]};")
    else:
        acc = f"({mid[0]} + {mid[1]})"
        for t in mid[2:]:
            acc = f"({acc} + {t})"
        lines.append(f"    out[c] = {acc} * {scale.hex()}f;")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("TDL_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "trustworthy_dl") / "kernels"


def _warn(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"trustworthy_dl: {msg}; the coordinate-wise rules use the slower torch path", stacklevel=4
        )


def _build(src: str) -> Callable[..., int] | None:
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256("\n".join([src, cc, *_FLAGS, _cpu_signature()]).encode()).hexdigest()[:20]
    target = _cache_dir() / f"middle_mean-{platform.machine()}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        c_file = tmp[:-3] + ".c"
        try:
            Path(c_file).write_text(src)
            proc = subprocess.run(
                [cc, *_FLAGS, c_file, "-o", tmp], capture_output=True, text=True, timeout=300
            )
            if proc.returncode != 0:
                _warn(f"building a native kernel with {cc} failed ({proc.stderr.strip()[:300]})")
                return None
            os.replace(tmp, target)
        finally:
            for f in (tmp, c_file):
                if os.path.exists(f):
                    os.unlink(f)
    fn = ctypes.CDLL(str(target)).tdl_middle_mean
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return fn


def middle_mean_kernel(
    ops: Sequence[Op], wire_row: Sequence[int], lo: int, hi: int
) -> Callable[[Tensor, Tensor, int, int], None] | None:
    """A function ``run(X_MD, out_D, start, stop)`` computing ``out[start:stop]`` from the columns
    [start, stop) of ``X_MD`` (CPU float32, unit column stride), or None if it cannot be built."""
    if not enabled() or len(wire_row) > MAX_ROWS:
        return None
    src = source(ops, wire_row, lo, hi)
    with _lock:
        if src not in _kernels:
            try:
                _kernels[src] = _build(src)
            except (OSError, subprocess.SubprocessError) as err:
                _warn(f"a native kernel could not be built or loaded ({err})")
                _kernels[src] = None
        fn = _kernels[src]
    if fn is None:
        return None
    m = len(wire_row)

    def run(X_MD: Tensor, out_D: Tensor, start: int, stop: int) -> None:
        if (
            X_MD.shape[0] != m
            or X_MD.stride(1) != 1
            or X_MD.dtype != torch.float32
            or X_MD.device.type != "cpu"
        ):
            raise ValueError("native kernel: needs the plan's rows as CPU float32 with contiguous columns")
        fn(X_MD.data_ptr(), X_MD.stride(0), start, stop, out_D.data_ptr())

    return run
