"""Native sorting-network kernels: a ``_sortnet`` plan compiled to straight-line C.

In torch, each comparator of a plan is one op over a column block, so the blocks must be megabytes
wide to amortise the dispatch, and every op streams its rows through the cache. Here the whole plan
becomes the body of one loop over the columns: the M values of a column live in local variables
(vector registers once the compiler vectorises the loop across columns), the comparators are
register min / max, and the data is read from memory once. Measured in ``benchmarks/aggregators.py``.

Same arithmetic as the torch path, so the results are bitwise equal (tests check): NaN -> +inf on
load; ``min(a, b) = a < b ? a : b`` and ``max(a, b) = a > b ? a : b`` as ATen's vectorised
minimum / maximum; the middle wires summed left to right, then times ``1/k`` rounded to float32
(median, trimmed mean); Bulyan's window costs, tie tolerance and averaging in the torch path's
order, with NaN-propagating maximum / minimum. Built by ``_native``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from trustworthy_dl.aggregation._native import EXACT, MAX_ROWS, enabled, library

__all__ = ["Op", "bulyan_kernel", "bulyan_source", "middle_mean_kernel", "source"]

Op = tuple[int, int, int, int]  # (0 = min / 1 = max, input row, input row, output row)


def _network(load: str, ops: Sequence[Op], m: int) -> list[str]:
    """Loop-body lines: load the m values of column c (``load`` formats row i), NaN -> +inf, then
    the comparator program over m + 1 registers."""
    lines = [f"    float r{i} = {load.format(i=i)}; r{i} = r{i} != r{i} ? INFINITY : r{i};" for i in range(m)]
    if any(o == m for _, _, _, o in ops):
        lines.append(f"    float r{m};")
    for kind, x, y, o in ops:
        cmp = "<" if kind == 0 else ">"
        lines.append(f"    r{o} = r{x} {cmp} r{y} ? r{x} : r{y};")
    return lines


def source(ops: Sequence[Op], wire_row: Sequence[int], lo: int, hi: int) -> str:
    """C source of ``out[c] = mean(wires lo..hi)`` after the comparator program, for each column c."""
    m = len(wire_row)
    k = hi - lo + 1
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "void tdl_middle_mean(const float *restrict X, int64_t ld, int64_t start, int64_t stop,"
        " float *restrict out) {",
        "  for (int64_t c = start; c < stop; c++) {",
    ]
    lines += _network("X[{i} * ld + c]", ops, m)
    mid = [f"r{wire_row[w]}" for w in range(lo, hi + 1)]
    if k == 1:
        lines.append(f"    out[c] = {mid[0]};")
    else:
        acc = f"({mid[0]} + {mid[1]})"
        for t in mid[2:]:
            acc = f"({acc} + {t})"
        lines.append(f"    out[c] = {acc} * {_f32_hex(1.0 / k)};")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _f32_hex(v: float) -> str:
    """A Python float as torch casts it to float32, as a C hex literal."""
    return float(torch.tensor(v, dtype=torch.float32)).hex() + "f"


def bulyan_source(ops: Sequence[Op], wire_row: Sequence[int], beta: int) -> str:
    """C source of Bulyan's coordinate stage after the sorting program (``_sortnet.bulyan_coordinates``):
    the mean of the beta-wide windows of sorted values nearest the median, ties averaged. Rows come
    as pointers (the selected rows of the update matrix); maximum / minimum propagate NaN as ATen's."""
    m = len(wire_row)
    lo, hi, nwin = (m - 1) // 2, m // 2, m - beta + 1
    s = [f"r{wire_row[k]}" for k in range(m)]
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "static inline float MAXN(float a, float b) {",
        "  float m = a > b ? a : b;",
        '  return __builtin_isunordered(a, b) ? __builtin_nanf("") : m;',
        "}",
        "static inline float MINN(float a, float b) {",
        "  float m = a < b ? a : b;",
        '  return __builtin_isunordered(a, b) ? __builtin_nanf("") : m;',
        "}",
        "void tdl_bulyan(const float *const *rows, int64_t start, int64_t stop, float *restrict out) {",
    ]
    lines += [f"  const float *p{i} = rows[{i}];" for i in range(m)]
    lines.append("  for (int64_t c = start; c < stop; c++) {")
    lines += _network("p{i}[c]", ops, m)
    lines.append(f"    float med = ({s[lo]} + {s[hi]}) * 0x1p-1f;")
    for k in range(nwin):
        lines.append(f"    float c{k} = MAXN(med - {s[k]}, {s[k + beta - 1]} - med);")
    lines.append("    float best = c0;")
    lines += [f"    best = MINN(best, c{k});" for k in range(1, nwin)]
    lines.append(f"    best = best + (fabsf(med) + best) * {_f32_hex(1e-6)};")
    lines.append("    float acc = 0.0f, cnt = 0.0f, win;")
    for k in range(nwin):
        lines.append(f"    win = {s[k]};")
        lines += [f"    win = win + {s[t]};" for t in range(k + 1, k + beta)]
        lines.append(f"    acc = acc + (c{k} <= best ? win : 0.0f);")
        lines.append(f"    cnt = cnt + (c{k} <= best ? 1.0f : 0.0f);")
    lines.append(f"    out[c] = acc / (cnt * {_f32_hex(float(beta))});")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def bulyan_kernel(
    ops: Sequence[Op], wire_row: Sequence[int], beta: int
) -> Callable[[Sequence[Tensor], Tensor, int, int], None] | None:
    """``run(rows, out_D, start, stop)``: Bulyan's coordinate stage over the given (D,) rows for
    the columns [start, stop), or None if it cannot be built."""
    if not enabled() or len(wire_row) > MAX_ROWS:
        return None
    # -fno-trapping-math lets GCC if-convert the NaN checks (vectorised); rounding is unchanged
    lib = library(bulyan_source(ops, wire_row, beta), "bulyan", (*EXACT, "-fno-trapping-math"))
    if lib is None:
        return None
    fn = lib.tdl_bulyan
    fn.restype = None
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    m = len(wire_row)

    def run(rows: Sequence[Tensor], out_D: Tensor, start: int, stop: int) -> None:
        if len(rows) != m or any(r.dtype != torch.float32 or r.stride(0) != 1 for r in rows):
            raise ValueError(f"native Bulyan kernel: needs {m} CPU float32 rows with unit stride")
        ptrs = (ctypes.c_void_p * m)(*[r.data_ptr() for r in rows])
        fn(ptrs, start, stop, out_D.data_ptr())

    return run


def middle_mean_kernel(
    ops: Sequence[Op], wire_row: Sequence[int], lo: int, hi: int
) -> Callable[[Tensor, Tensor, int, int], None] | None:
    """A function ``run(X_MD, out_D, start, stop)`` computing ``out[start:stop]`` from the columns
    [start, stop) of ``X_MD`` (CPU float32, unit column stride), or None if it cannot be built."""
    if not enabled() or len(wire_row) > MAX_ROWS:
        return None
    lib = library(source(ops, wire_row, lo, hi), "middle_mean", EXACT)
    if lib is None:
        return None
    fn = lib.tdl_middle_mean
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
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
