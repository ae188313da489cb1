"""Native mixing kernel: a pre-aggregator's (M, D) output rows ``C @ X`` written in one pass.

``Rows.materialize`` (NNM, bucketing, clipping with their output) is a (M, K) x (K, D) product with
a tiny inner dimension: MKL runs it as a GEMM whose output goes through the cache (each output
line is read before it is written) into a freshly allocated (M, D) tensor. The kernel keeps the K
input values of 16 columns in vector registers, forms each output row with K multiply-adds
(coefficients broadcast from memory) and writes it with non-temporal stores where AVX-512 is
available: one read of the input, one write of the output. Identical coefficient rows give
bitwise-identical output rows (same operations in the same order). Built by ``_native``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from trustworthy_dl.aggregation._native import FUSED, enabled, library

__all__ = ["MixKernel", "mix_kernel"]

#: Input rows the kernel keeps in registers at most (more: the torch path).
MAX_INPUTS = 24

MIX_SOURCE = r"""
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define KMAX 24

/* out[i][c] = sum_j C[i * K + j] * rows[j][c] for i < M and c in [s, e). */
void tdl_mix(const float *const *rows, int32_t K, const float *C, int32_t M, float *const *out,
             int64_t s, int64_t e) {
    int64_t c = s;
#ifdef __AVX512F__
    /* non-temporal stores need 64-byte aligned addresses: scalar columns until out[0] is aligned */
    int aligned = 1;
    for (int32_t i = 0; i < M; i++)
        if (((uintptr_t)(out[i] + s) & 63) != ((uintptr_t)(out[0] + s) & 63)) aligned = 0;
    if (aligned)
        for (; c < e && ((uintptr_t)(out[0] + c) & 63); c++)
            for (int32_t i = 0; i < M; i++) {
                float acc = C[(int64_t)i * K] * rows[0][c];
                for (int32_t j = 1; j < K; j++) acc += C[(int64_t)i * K + j] * rows[j][c];
                out[i][c] = acc;
            }
#endif
    for (; c + 16 <= e; c += 16) {
        v16 x[KMAX];
        for (int32_t j = 0; j < K; j++) x[j] = *(const v16 *)(rows[j] + c);
        for (int32_t i = 0; i < M; i++) {
            const float *ci = C + (int64_t)i * K;
            v16 acc = ci[0] * x[0];
            for (int32_t j = 1; j < K; j++) acc += ci[j] * x[j];
#ifdef __AVX512F__
            if (aligned) { _mm512_stream_ps(out[i] + c, (__m512)acc); continue; }
#endif
            *(v16 *)(out[i] + c) = acc;
        }
    }
    for (; c < e; c++)
        for (int32_t i = 0; i < M; i++) {
            float acc = C[(int64_t)i * K] * rows[0][c];
            for (int32_t j = 1; j < K; j++) acc += C[(int64_t)i * K + j] * rows[j][c];
            out[i][c] = acc;
        }
#ifdef __AVX512F__
    _mm_sfence();
#endif
}
"""


class MixKernel:
    """``kernel(rows, C, out_rows, start, stop)``: ``out_rows[i][start:stop] = sum_j C[i, j] rows[j]``."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        fn = lib.tdl_mix
        fn.restype = None
        fn.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_int64,
            ctypes.c_int64,
        ]
        self._fn = fn

    def __call__(
        self, rows: Sequence[Tensor], C_MK: Tensor, out: Sequence[Tensor], start: int, stop: int
    ) -> None:
        K, M = len(rows), len(out)
        if C_MK.shape != (M, K) or C_MK.dtype != torch.float32 or not C_MK.is_contiguous():
            raise ValueError(f"mix kernel: C must be a contiguous float32 ({M}, {K}) matrix")
        ins = (ctypes.c_void_p * K)(*[r.data_ptr() for r in rows])
        outs = (ctypes.c_void_p * M)(*[o.data_ptr() for o in out])
        self._fn(ins, K, C_MK.data_ptr(), M, outs, start, stop)


def mix_kernel() -> MixKernel | None:
    """The mixing kernel, or None if native kernels are off or cannot be built."""
    if not enabled():
        return None
    lib = library(MIX_SOURCE, "mix", FUSED)
    return None if lib is None else MixKernel(lib)
