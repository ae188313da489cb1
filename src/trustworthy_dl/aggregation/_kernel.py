"""Native CPU kernels: coordinate-wise middle means (median, trimmed mean) and the centred Gram matrix.

**Middle means.** In torch, each comparator of a plan (``_sortnet``) is one op over a column block, so the blocks
must be megabytes wide to amortise the dispatch, and every op streams its rows through the cache.
Here the whole plan becomes the body of one loop over the columns: the M values of a column live in
local variables (vector registers once the compiler vectorises the loop across columns), the
comparators are register min / max, and the data is read from memory once. Measured in
``benchmarks/aggregators.py``.

Same arithmetic as the torch path, so the results are bitwise equal (tests check): NaN -> +inf on
load; ``min(a, b) = a < b ? a : b`` and ``max(a, b) = a > b ? a : b`` as ATen's vectorised
minimum / maximum; the middle wires summed left to right, then times ``1/k`` rounded to float32.

**Centred Gram.** MKL's sgemm reaches about 53 GFLOP/s per core on the (16, B) x (B, 16) shape of
a Gram block, and the torch path first writes the centred block to a buffer. The kernel centres a
tile of 256 columns into L1 and accumulates the upper triangle of ``C C^T`` with 4 x 4 register
tiles of 16-lane float32 accumulators (4 x 1 and 1 x 1 for rows past the last block of 4; about
half the multiply-adds of a full GEMM), flushed to float64 every 16 tiles. Rows given as NULL count as zero (centred) rows: the far rows of a block.

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

__all__ = [
    "MAX_ROWS",
    "MIN_COLUMNS",
    "bulyan_kernel",
    "enabled",
    "gram_available",
    "gram_kernel",
    "middle_mean_kernel",
    "source",
]

#: Plans over more rows than this stay on the torch path (the straight-line body grows as M log^2 M).
MAX_ROWS = 128
#: Inputs narrower than this stay on the torch path (fast enough there; no compile for small tests).
MIN_COLUMNS = 1 << 16

_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11")
#: Per kernel: the middle means must round as torch does (no fused multiply-add); the Gram wants FMAs.
_EXACT = ("-ffp-contract=off",)
_FUSED = ("-ffp-contract=fast",)

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}
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
    lines += [f"    float r{i} = p{i}[c]; r{i} = r{i} != r{i} ? INFINITY : r{i};" for i in range(m)]
    if any(o == m for _, _, _, o in ops):
        lines.append(f"    float r{m};")
    for kind, x, y, o in ops:
        cmp = "<" if kind == 0 else ">"
        lines.append(f"    r{o} = r{x} {cmp} r{y} ? r{x} : r{y};")
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
    lib = _library(bulyan_source(ops, wire_row, beta), "bulyan", (*_EXACT, "-fno-trapping-math"))
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


def _build(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256("\n".join([src, cc, *_FLAGS, *flags, _cpu_signature()]).encode()).hexdigest()[:20]
    target = _cache_dir() / f"{name}-{platform.machine()}-{key}.so"
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
    return ctypes.CDLL(str(target))


def _library(src: str, name: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    with _lock:
        if src not in _libs:
            try:
                _libs[src] = _build(src, name, flags)
            except (OSError, subprocess.SubprocessError) as err:
                _warn(f"a native kernel could not be built or loaded ({err})")
                _libs[src] = None
        return _libs[src]


def middle_mean_kernel(
    ops: Sequence[Op], wire_row: Sequence[int], lo: int, hi: int
) -> Callable[[Tensor, Tensor, int, int], None] | None:
    """A function ``run(X_MD, out_D, start, stop)`` computing ``out[start:stop]`` from the columns
    [start, stop) of ``X_MD`` (CPU float32, unit column stride), or None if it cannot be built."""
    if not enabled() or len(wire_row) > MAX_ROWS:
        return None
    lib = _library(source(ops, wire_row, lo, hi), "middle_mean", _EXACT)
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


# --------------------------------------------------------------------------- centred Gram

_GRAM_TILE = 256  # columns centred into L1 at a time (must match TILE below)

GRAM_SOURCE = r"""
#include <stdint.h>
#include <string.h>
typedef float v16 __attribute__((vector_size(64)));
#define TILE 256
#define FLUSH 16 /* tiles between float64 flushes: float32 sums run over at most 256 terms a lane */

/* Accumulators: A[i * R + j] holds 16 lanes of the (i, j) product (upper triangle used). */

static void tile4x4(const float *x, const float *y, v16 *A, int64_t R, int64_t i0, int64_t j0) {
    v16 *p0 = A + i0 * R + j0, *p1 = p0 + R, *p2 = p1 + R, *p3 = p2 + R;
    v16 a00 = p0[0], a01 = p0[1], a02 = p0[2], a03 = p0[3], a10 = p1[0], a11 = p1[1], a12 = p1[2],
        a13 = p1[3], a20 = p2[0], a21 = p2[1], a22 = p2[2], a23 = p2[3], a30 = p3[0], a31 = p3[1],
        a32 = p3[2], a33 = p3[3];
    for (int32_t c = 0; c < TILE; c += 16) {
        v16 x0 = *(const v16 *)(x + c), x1 = *(const v16 *)(x + TILE + c),
            x2 = *(const v16 *)(x + 2 * TILE + c), x3 = *(const v16 *)(x + 3 * TILE + c);
        v16 y0 = *(const v16 *)(y + c), y1 = *(const v16 *)(y + TILE + c),
            y2 = *(const v16 *)(y + 2 * TILE + c), y3 = *(const v16 *)(y + 3 * TILE + c);
        /* keep the 8 operands in registers: GCC otherwise folds each y load into 4 FMAs (20 loads
           per 16 FMAs instead of 8; measured 4.5-5.4 vs 5.4-6.7 ns per column in cache) */
        __asm__("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(y0), "+v"(y1), "+v"(y2), "+v"(y3));
        a00 += x0 * y0; a01 += x0 * y1; a02 += x0 * y2; a03 += x0 * y3;
        a10 += x1 * y0; a11 += x1 * y1; a12 += x1 * y2; a13 += x1 * y3;
        a20 += x2 * y0; a21 += x2 * y1; a22 += x2 * y2; a23 += x2 * y3;
        a30 += x3 * y0; a31 += x3 * y1; a32 += x3 * y2; a33 += x3 * y3;
    }
    p0[0] = a00; p0[1] = a01; p0[2] = a02; p0[3] = a03; p1[0] = a10; p1[1] = a11; p1[2] = a12;
    p1[3] = a13; p2[0] = a20; p2[1] = a21; p2[2] = a22; p2[3] = a23; p3[0] = a30; p3[1] = a31;
    p3[2] = a32; p3[3] = a33;
}

static void tile4x1(const float *x, const float *y, v16 *A, int64_t R, int64_t i0, int64_t j) {
    v16 *p = A + i0 * R + j;
    v16 a0 = p[0], a1 = p[R], a2 = p[2 * R], a3 = p[3 * R];
    for (int32_t c = 0; c < TILE; c += 16) {
        v16 y0 = *(const v16 *)(y + c);
        a0 += *(const v16 *)(x + c) * y0;
        a1 += *(const v16 *)(x + TILE + c) * y0;
        a2 += *(const v16 *)(x + 2 * TILE + c) * y0;
        a3 += *(const v16 *)(x + 3 * TILE + c) * y0;
    }
    p[0] = a0; p[R] = a1; p[2 * R] = a2; p[3 * R] = a3;
}

static void tile1x1(const float *x, const float *y, v16 *a) {
    v16 acc = *a;
    for (int32_t c = 0; c < TILE; c += 16) acc += *(const v16 *)(x + c) * *(const v16 *)(y + c);
    *a = acc;
}

static void flush(const float *acc, double *accd, int64_t n) {
    for (int64_t i = 0; i < n; i++) accd[i] += (double)acc[i];
}

int64_t tdl_gram_work_bytes(int32_t R) {
    return (int64_t)R * TILE * 4 + (int64_t)R * R * 16 * 4 + (int64_t)R * R * 16 * 8;
}

/* G (R x R, float64, row-major, overwritten) = C C^T over the columns [s, s + w) of the rows, where
 * C_i = rows[i] - ref (rows[i] == NULL: C_i = 0). work: 64-byte aligned, tdl_gram_work_bytes(R). */
void tdl_centred_gram(const float *const *rows, int32_t R, int64_t s, int64_t w, const float *ref,
                      char *restrict work, double *restrict G) {
    const int64_t nacc = (int64_t)R * R * 16, nbf = R / 4;
    float *buf = (float *)work;                            /* R x TILE centred tile */
    v16 *acc = (v16 *)(work + (int64_t)R * TILE * 4);      /* R x R x 16 lanes */
    double *accd = (double *)(work + (int64_t)R * TILE * 4 + nacc * 4);
    memset(acc, 0, sizeof(float) * (size_t)nacc);
    memset(accd, 0, sizeof(double) * (size_t)nacc);
    int32_t since = 0;
    for (int64_t t = 0; t < w; t += TILE) {
        const int64_t cw = w - t < TILE ? w - t : TILE;
        const float *r = ref + s + t;
        for (int32_t i = 0; i < R; i++) {
            float *dst = buf + (int64_t)i * TILE;
            if (!rows[i]) { memset(dst, 0, sizeof(float) * TILE); continue; }
            const float *src = rows[i] + s + t;
            if (t + TILE < w) /* next tile into L2: measured 8.4 vs 11.2 ns per column */
                for (int32_t c = 0; c < TILE; c += 16) __builtin_prefetch(src + TILE + c, 0, 1);
            for (int64_t c = 0; c < cw; c++) dst[c] = src[c] - r[c];
            for (int64_t c = cw; c < TILE; c++) dst[c] = 0.0f;
        }
        for (int64_t bi = 0; bi < nbf; bi++)
            for (int64_t bj = bi; bj < nbf; bj++)
                tile4x4(buf + 4 * bi * TILE, buf + 4 * bj * TILE, acc, R, 4 * bi, 4 * bj);
        for (int64_t j = 4 * nbf; j < R; j++) { /* rows past the last full block of 4 */
            for (int64_t bi = 0; bi < nbf; bi++) tile4x1(buf + 4 * bi * TILE, buf + j * TILE, acc, R, 4 * bi, j);
            for (int64_t i = 4 * nbf; i <= j; i++) tile1x1(buf + i * TILE, buf + j * TILE, acc + i * R + j);
        }
        if (++since == FLUSH) {
            flush((const float *)acc, accd, nacc);
            memset(acc, 0, sizeof(float) * (size_t)nacc);
            since = 0;
        }
    }
    flush((const float *)acc, accd, nacc);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = i; j < R; j++) {
            const double *a = accd + (i * R + j) * 16;
            double sum = 0.0;
            for (int32_t l = 0; l < 16; l++) sum += a[l];
            G[i * R + j] = sum;
            G[j * R + i] = sum;
        }
}
"""


class GramKernel:
    """The centred-Gram kernel bound to R rows: ``G = kernel(ref, start, stop, skip=None)`` is the
    (R, R) float64 Gram matrix of ``rows - rows[ref]`` over the columns [start, stop), with the rows
    flagged in ``skip`` counted as zero (centred) rows. One instance per thread (it owns its work
    buffer); the rows are (D,) CPU float32 tensors with unit stride."""

    def __init__(self, lib: ctypes.CDLL, rows: Sequence[Tensor]) -> None:
        fn = lib.tdl_centred_gram
        fn.restype = None
        fn.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int32,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        size = lib.tdl_gram_work_bytes
        size.restype = ctypes.c_int64
        size.argtypes = [ctypes.c_int32]
        self._fn = fn
        self._rows = list(rows)
        self._addr = [r.data_ptr() for r in self._rows]
        self.R = len(self._rows)
        self._ptrs = (ctypes.c_void_p * self.R)(*self._addr)
        nbytes = int(size(self.R))
        self._work = torch.empty(nbytes + 64, dtype=torch.uint8)
        self._work_ptr = self._work.data_ptr() + (-self._work.data_ptr()) % 64
        self.G = torch.empty(self.R, self.R, dtype=torch.float64)  # overwritten by every call

    def __call__(self, ref: int, start: int, stop: int, skip: Sequence[bool] | None = None) -> Tensor:
        ptrs = self._ptrs
        if skip is not None:
            ptrs = (ctypes.c_void_p * self.R)(*[None if k else a for a, k in zip(self._addr, skip)])
        self._fn(ptrs, self.R, start, stop - start, self._addr[ref], self._work_ptr, self.G.data_ptr())
        return self.G


def _gram_library() -> ctypes.CDLL | None:
    return _library(GRAM_SOURCE, "centred_gram", _FUSED) if enabled() else None


def gram_available() -> bool:
    """Whether the centred-Gram kernel is on and built (building it on first call)."""
    return _gram_library() is not None


def gram_kernel(rows: Sequence[Tensor]) -> GramKernel | None:
    """The centred-Gram kernel over ``rows``, or None if native kernels are off or cannot be built."""
    lib = _gram_library()
    return None if lib is None else GramKernel(lib, rows)
