"""Native centred-Gram kernel for the distance-based rules (``_gram``).

MKL's sgemm reaches about 53 GFLOP/s per core on the (16, B) x (B, 16) shape of a Gram block, and
the torch path first writes the centred block to a buffer. The kernel centres a tile of 256
columns into L1 and accumulates the upper triangle of ``C C^T`` with 4 x 4 register tiles of
16-lane float32 accumulators (4 x 1 and 1 x 1 for rows past the last block of 4; about half the
multiply-adds of a full GEMM), flushed to float64 every 16 tiles. Rows given as NULL count as zero
(centred) rows: the far rows of a block. Built by ``_native``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from trustworthy_dl.aggregation._native import FUSED, enabled, library

__all__ = ["GramKernel", "gram_available", "gram_kernel"]

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
#if defined(__AVX512F__)
        /* keep the 8 operands in registers: GCC otherwise folds each y load into 4 FMAs (20 loads
           per 16 FMAs instead of 8; measured 4.5-5.4 vs 5.4-6.7 ns per column in cache). Only with
           AVX-512, where a 16-lane vector is one register ("v"); elsewhere the compiler splits it. */
        __asm__("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(y0), "+v"(y1), "+v"(y2), "+v"(y3));
#endif
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
    return library(GRAM_SOURCE, "centred_gram", FUSED) if enabled() else None


def gram_available() -> bool:
    """Whether the centred-Gram kernel is on and built (building it on first call)."""
    return _gram_library() is not None


def gram_kernel(rows: Sequence[Tensor]) -> GramKernel | None:
    """The centred-Gram kernel over ``rows``, or None if native kernels are off or cannot be built."""
    lib = _gram_library()
    return None if lib is None else GramKernel(lib, rows)
