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
tiles of 16-lane float32 accumulators (about half the multiply-adds of a full GEMM), converted to
float64 per call. Rows given as NULL count as zero (centred) rows: the far rows of a block.

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

__all__ = ["MAX_ROWS", "MIN_COLUMNS", "enabled", "gram_kernel", "middle_mean_kernel", "source"]

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

_GRAM_TILE = 256  # columns centred into L1 at a time

GRAM_SOURCE = r"""
#include <stdint.h>
#include <string.h>
typedef float v16 __attribute__((vector_size(64)));
#define TILE 256

/* G (R x R, float64, row-major, overwritten) = C C^T over the columns [s, s + w) of the rows, where
 * C_i = rows[i] - ref (rows[i] == NULL: C_i = 0). work: P * TILE + nb * nb * 256 floats, 64-byte
 * aligned, P = R rounded up to 4, nb = P / 4. */
void tdl_centred_gram(const float *const *rows, int32_t R, int64_t s, int64_t w, const float *ref,
                      float *restrict work, double *restrict G) {
    const int32_t P = (R + 3) / 4 * 4, nb = P / 4;
    float *buf = work;                      /* P x TILE centred tile */
    v16 *acc = (v16 *)(work + (int64_t)P * TILE); /* nb x nb tiles of 4 x 4 accumulators */
    memset(buf, 0, sizeof(float) * (size_t)P * TILE);
    memset(acc, 0, sizeof(v16) * (size_t)nb * nb * 16);
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
        for (int32_t bi = 0; bi < nb; bi++) {
            const float *x = buf + (int64_t)4 * bi * TILE;
            for (int32_t bj = bi; bj < nb; bj++) {
                const float *y = buf + (int64_t)4 * bj * TILE;
                v16 *a = acc + ((int64_t)bi * nb + bj) * 16;
                v16 a00 = a[0], a01 = a[1], a02 = a[2], a03 = a[3], a10 = a[4], a11 = a[5], a12 = a[6],
                    a13 = a[7], a20 = a[8], a21 = a[9], a22 = a[10], a23 = a[11], a30 = a[12], a31 = a[13],
                    a32 = a[14], a33 = a[15];
                for (int32_t c = 0; c < TILE; c += 16) {
                    v16 x0 = *(const v16 *)(x + c), x1 = *(const v16 *)(x + TILE + c),
                        x2 = *(const v16 *)(x + 2 * TILE + c), x3 = *(const v16 *)(x + 3 * TILE + c);
                    v16 y0 = *(const v16 *)(y + c), y1 = *(const v16 *)(y + TILE + c),
                        y2 = *(const v16 *)(y + 2 * TILE + c), y3 = *(const v16 *)(y + 3 * TILE + c);
                    a00 += x0 * y0; a01 += x0 * y1; a02 += x0 * y2; a03 += x0 * y3;
                    a10 += x1 * y0; a11 += x1 * y1; a12 += x1 * y2; a13 += x1 * y3;
                    a20 += x2 * y0; a21 += x2 * y1; a22 += x2 * y2; a23 += x2 * y3;
                    a30 += x3 * y0; a31 += x3 * y1; a32 += x3 * y2; a33 += x3 * y3;
                }
                a[0] = a00; a[1] = a01; a[2] = a02; a[3] = a03; a[4] = a10; a[5] = a11; a[6] = a12;
                a[7] = a13; a[8] = a20; a[9] = a21; a[10] = a22; a[11] = a23; a[12] = a30; a[13] = a31;
                a[14] = a32; a[15] = a33;
            }
        }
    }
    for (int32_t bi = 0; bi < nb; bi++)
        for (int32_t bj = bi; bj < nb; bj++) {
            const float *a = (const float *)(acc + ((int64_t)bi * nb + bj) * 16);
            for (int32_t u = 0; u < 4; u++)
                for (int32_t v = 0; v < 4; v++) {
                    const int32_t i = 4 * bi + u, j = 4 * bj + v;
                    if (i >= R || j >= R || (bi == bj && v < u)) continue;
                    double sum = 0.0;
                    for (int32_t l = 0; l < 16; l++) sum += (double)a[(u * 4 + v) * 16 + l];
                    G[(int64_t)i * R + j] = sum;
                    G[(int64_t)j * R + i] = sum;
                }
        }
}
"""


class GramKernel:
    """``G = kernel(rows, ref, start, stop)``: the (R, R) float64 Gram matrix of ``rows - ref`` over
    the columns [start, stop); ``rows`` are (D,) CPU float32 tensors with unit stride, None for a
    zero row."""

    def __init__(self, lib: ctypes.CDLL) -> None:
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
        self._fn = fn

    def __call__(self, rows: Sequence[Tensor | None], ref: Tensor, start: int, stop: int) -> Tensor:
        R = len(rows)
        P = -(-R // 4) * 4
        nb = P // 4
        work = torch.empty(P * _GRAM_TILE + nb * nb * 256 + 16, dtype=torch.float32)
        off = (-work.data_ptr() // 4) % 16  # 64-byte alignment for the vector loads
        G = torch.empty(R, R, dtype=torch.float64)
        ptrs = (ctypes.c_void_p * R)(*[None if r is None else r.data_ptr() for r in rows])
        self._fn(ptrs, R, start, stop - start, ref.data_ptr(), work.data_ptr() + 4 * off, G.data_ptr())
        return G


def gram_kernel() -> GramKernel | None:
    """The centred-Gram kernel, or None if native kernels are off or cannot be built."""
    if not enabled():
        return None
    lib = _library(GRAM_SOURCE, "centred_gram", _FUSED)
    return None if lib is None else GramKernel(lib)
