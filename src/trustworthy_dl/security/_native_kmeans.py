"""Native kernel for the round's small 2-means: Lloyd's iterations over a few starts of N points.

Stage 1 splits a few dozen points in two, twice a round (the rank features with their memory, and
the memory alone). In numpy each Lloyd step is a dozen array operations of a microsecond or two,
but a round's split runs right after the nodes' gradients, with every cache cold, where the same
operations cost ten times that (measured: the two splits were 0.3 ms of a round's 2.5 ms stage 1
at N = 16 warm, about 0.6 ms in the run). This kernel does the same steps in one call: per start,
assign each point to the nearer centre (``x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2``), move the
centres to their groups' means (an emptied group keeps its centre), stop when no label changes or
after ``iters`` steps; keep the start of least within-group sum of squares (the first on a tie).
The same arithmetic as :func:`~trustworthy_dl.security.kmeans2._lloyd_numpy` in a fixed order:
the same split, except when two starts end in different splits of exactly equal inertia (tied
points, e.g. rounded ones), where the sums' order may keep the other one (as between the numpy and
the torch steps; a review found one such set in 3,000 random rounded ones; tested). Built like the aggregators' kernels
(``aggregation/_native.py``).

Legend: N points, F features, S starts.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

from trustworthy_dl.aggregation._native import EXACT, enabled, library

__all__ = ["KMEANS_SOURCE", "MAX_FEATURES", "lloyd_kernel"]

#: Features the kernel handles at most (its centres live on the stack).
MAX_FEATURES = 32

KMEANS_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define MAXF 32

/* pts: n x f (row-major), centres: s x 2 x f. Writes the best start's labels (0/1) and its
   within-group sum of squares. Returns 0, or -1 on bad sizes or no memory. */
int tdl_lloyd2(const double *pts, int32_t n, int32_t f, const double *centres, int32_t s,
               int32_t iters, int64_t *labels_out, double *w_out) {
    if (f < 1 || f > MAXF || n < 1 || s < 1) return -1;
    unsigned char *lab = (unsigned char *)malloc((size_t)n * 2);
    if (!lab) return -1;
    unsigned char *nw = lab + n;
    double total[MAXF];
    for (int32_t k = 0; k < f; k++) total[k] = 0.0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t k = 0; k < f; k++) total[k] += pts[(int64_t)i * f + k];
    double best = 0.0;
    int have = 0;
    for (int32_t st = 0; st < s; st++) {
        double c0[MAXF], c1[MAXF], dlt[MAXF], sum1[MAXF];
        memcpy(c0, centres + (int64_t)st * 2 * f, sizeof(double) * f);
        memcpy(c1, centres + (int64_t)st * 2 * f + f, sizeof(double) * f);
        memset(lab, 0, (size_t)n);
        for (int32_t it = 0; it < iters; it++) {
            double q1 = 0.0, q0 = 0.0;
            for (int32_t k = 0; k < f; k++) { q1 += c1[k] * c1[k]; q0 += c0[k] * c0[k]; }
            double cut = (q1 - q0) * 0.5;
            for (int32_t k = 0; k < f; k++) dlt[k] = c1[k] - c0[k];
            int changed = 0;
            for (int32_t i = 0; i < n; i++) {
                double dot = 0.0;
                for (int32_t k = 0; k < f; k++) dot += pts[(int64_t)i * f + k] * dlt[k];
                nw[i] = dot > cut;
                changed |= nw[i] != lab[i];
            }
            if (it > 0 && !changed) break;
            memcpy(lab, nw, (size_t)n);
            int64_t n1 = 0;
            for (int32_t k = 0; k < f; k++) sum1[k] = 0.0;
            for (int32_t i = 0; i < n; i++) {
                if (!lab[i]) continue;
                n1++;
                for (int32_t k = 0; k < f; k++) sum1[k] += pts[(int64_t)i * f + k];
            }
            if (n1 < n) {
                double m = (double)(n - n1);
                for (int32_t k = 0; k < f; k++) c0[k] = (total[k] - sum1[k]) / m;
            }
            if (n1 > 0) {
                for (int32_t k = 0; k < f; k++) c1[k] = sum1[k] / (double)n1;
            }
        }
        double w = 0.0;
        for (int32_t i = 0; i < n; i++) {
            const double *c = lab[i] ? c1 : c0;
            for (int32_t k = 0; k < f; k++) {
                double d = pts[(int64_t)i * f + k] - c[k];
                w += d * d;
            }
        }
        if (!have || w < best) {
            have = 1;
            best = w;
            for (int32_t i = 0; i < n; i++) labels_out[i] = lab[i];
        }
    }
    *w_out = best;
    free(lab);
    return 0;
}
"""


def lloyd_kernel() -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, float]] | None:
    """``run(pts_NF, centres_S2F, iters) -> (labels_N int64, w)`` for float64 points with at most
    :data:`MAX_FEATURES` features, or None when native kernels are unavailable."""
    if not enabled():
        return None
    lib = library(KMEANS_SOURCE, "lloyd2", EXACT)
    if lib is None:
        return None
    fn = lib.tdl_lloyd2
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]

    def run(pts_NF: np.ndarray, centres_S2F: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
        pts = np.ascontiguousarray(pts_NF, dtype=np.float64)
        cen = np.ascontiguousarray(centres_S2F, dtype=np.float64)
        n, f = pts.shape
        if f > MAX_FEATURES or cen.shape[1:] != (2, f):
            raise ValueError(f"native 2-means: needs (S, 2, {f}) centres and at most {MAX_FEATURES} features")
        labels = np.zeros(n, dtype=np.int64)
        w = np.zeros(1)
        if fn(pts.ctypes.data, n, f, cen.ctypes.data, cen.shape[0], iters, labels.ctypes.data, w.ctypes.data):
            raise MemoryError("native 2-means: bad sizes or out of memory")
        return labels, float(w[0])

    return run
