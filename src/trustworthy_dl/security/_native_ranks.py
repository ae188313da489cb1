"""Native kernel for the rank moments: per node, the exact sums of its signed rank counts.

MANDERA's features need only two numbers per node, the mean and the spread of its ranks, and
with ties averaged the rank of node i in a column is ``(a_i + N + 1) / 2`` where ``a_i = sum_j
sign(x_i - x_j)`` is an integer. So the kernel never materialises the (N, d) rank matrix: for a
block of columns it accumulates every ``a_i`` in int32 (each pair i < j compared once, the sign
added to i and subtracted from j), then adds ``sum a_i`` and ``sum a_i^2`` to int64 totals.
Integer sums are exact in any order, so the native and the torch paths of
:func:`~trustworthy_dl.security.ranks.rank_moments` give bitwise the same moments, on any
number of threads. Built like the aggregators' kernels (``aggregation/_native.py``).

Legend: N nodes, d columns.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
from torch import Tensor

from trustworthy_dl.aggregation._native import EXACT, enabled, library

__all__ = ["RANK_SOURCE", "rank_sums_kernel"]

#: Nodes the kernel handles at most (its int32 counters: N x 256 of them per block).
MAX_NODES = 4096

RANK_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#define BLK 256

/* For the columns [s, e) of the (n, ld-strided) float32 matrix X:
   a_i(c) = sum_j sign(X[i][c] - X[j][c]);  s1[i] += sum_c a_i(c),  s2[i] += sum_c a_i(c)^2.
   Returns 0, or -1 if the counters could not be allocated. */
int tdl_rank_sums(const float *X, int64_t ld, int32_t n, int64_t s, int64_t e, int64_t *s1, int64_t *s2) {
    int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * (size_t)n * BLK);
    if (!acc) return -1;
    for (int64_t c0 = s; c0 < e; c0 += BLK) {
        int64_t w = e - c0 < BLK ? e - c0 : BLK;
        for (int64_t k = 0; k < (int64_t)n * BLK; k++) acc[k] = 0;
        for (int32_t i = 0; i < n; i++) {
            const float *xi = X + (int64_t)i * ld + c0;
            int32_t *restrict ai = acc + (int64_t)i * BLK;
            for (int32_t j = i + 1; j < n; j++) {
                const float *xj = X + (int64_t)j * ld + c0;
                int32_t *restrict aj = acc + (int64_t)j * BLK;
                for (int64_t c = 0; c < w; c++) {
                    int32_t sg = (xi[c] > xj[c]) - (xi[c] < xj[c]);
                    ai[c] += sg;
                    aj[c] -= sg;
                }
            }
        }
        for (int32_t i = 0; i < n; i++) {
            const int32_t *ai = acc + (int64_t)i * BLK;
            int64_t t1 = 0, t2 = 0;
            for (int64_t c = 0; c < w; c++) {
                t1 += ai[c];
                t2 += (int64_t)ai[c] * ai[c];
            }
            s1[i] += t1;
            s2[i] += t2;
        }
    }
    free(acc);
    return 0;
}
"""


def rank_sums_kernel() -> Callable[[Tensor, int, int], tuple[Tensor, Tensor]] | None:
    """``run(X_Nd, start, stop) -> (s1_N, s2_N)`` (int64) over the columns [start, stop) of a CPU
    float32 matrix with contiguous columns and finite values (a NaN would count as a tie), or None
    when native kernels are unavailable."""
    if not enabled():
        return None
    lib = library(RANK_SOURCE, "rank_sums", EXACT)
    if lib is None:
        return None
    fn = lib.tdl_rank_sums
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int32,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]

    def run(X_Nd: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
        n = X_Nd.shape[0]
        if X_Nd.dtype != torch.float32 or X_Nd.device.type != "cpu" or X_Nd.stride(1) != 1 or n > MAX_NODES:
            raise ValueError(
                f"native rank kernel: needs at most {MAX_NODES} CPU float32 rows with contiguous columns"
            )
        s1 = torch.zeros(n, dtype=torch.int64)
        s2 = torch.zeros(n, dtype=torch.int64)
        if fn(X_Nd.data_ptr(), X_Nd.stride(0), n, start, stop, s1.data_ptr(), s2.data_ptr()) != 0:
            raise MemoryError("native rank kernel: out of memory for its counters")
        return s1, s2

    return run
