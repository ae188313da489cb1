"""Pairwise geometry of the rows from one blocked Gram matrix (one GEMM pass over the data).

Distance-based rules (Krum, Multi-Krum, NNM, geometric median, CenteredClip, MDA) need only inner
products between the rows and between linear combinations of rows. We compute them once:

* **Centred, blocked GEMM.** The columns are cut into blocks that stay in cache. In each block the
  rows are centred on a reference row (a row of median distance to the previous block's reference)
  before a float32 GEMM, and the block Gram is accumulated in float64. Centring removes the cancellation of
  ``|x|^2 - 2<x, z> + |z|^2`` when the rows are close to each other (the usual case for
  gradients); float64 accumulation removes the error of long float32 sums. The result matches a
  float64 reference to about 1e-6 (relative to the distances) at D = 1e7, where an uncentred
  float32 ``X @ X.T`` is off by up to 1e-3.
* **Affine bookkeeping.** With per-block references r_b, every row is ``v_i = c_i + r`` where the
  c_i are the centred rows. For combinations ``sum_i e_i v_i`` (weights ``e``, total ``s_e``)::

      <sum e v, sum g v> = e^T T g + s_e (g . a) + s_g (e . a),   a_i = (|v_i|^2 - T_ii) / 2

  so differences of points (s = 0) use only T; absolute quantities (norms, for clipping) also
  need the row norms, which cost one more pass and are computed only when a rule asks. :class:`Geometry` carries (T, a, s) and maps through mixing matrices, so
  pre-aggregators (NNM, bucketing, clipping) never materialise their output rows.
* **Far rows.** A row with a non-finite value or (centred) norm above :data:`FAR_NORM` is *far*: it
  is zeroed in the GEMM (no overflow, no NaN) and every rule treats it as infinitely far.
* **Native kernel.** On CPU, for float32 inputs of at least ``native_build.MIN_COLUMNS`` columns, each
  block's centring and Gram product run in one native call (``_native_gram``: centring in
  L1, register-tiled upper triangle, float64 per block); the same blocks, references and far-row
  handling as the torch path, with float32 sums in another order (tests compare both to float64).

Legend: N rows, K extra vectors (e.g. CenteredClip's previous centre), R = N + K, D columns,
M mixed rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustworthy_dl.aggregation import _native as native_build
from trustworthy_dl.aggregation import _native_gram as native_gram
from trustworthy_dl.aggregation._parallel import map_column_chunks
from trustworthy_dl.aggregation.sharding import reduce_partial

__all__ = ["FAR_NORM", "Geometry", "centred_gram", "row_norms"]

#: Rows whose L2 norm exceeds this (or is not finite) are treated as infinitely far away. It keeps
#: every float32 product of the GEMM below the float32 maximum (3.4e38).
FAR_NORM = 1e18

#: Values per GEMM block (rows x columns): 16K-64K columns, so that the block stays in cache.
GRAM_BLOCK_VALUES = 1 << 20


@dataclass(frozen=True)
class Geometry:
    """Inner products of R points (rows, combinations of rows, extra vectors).

    Attributes:
        T: (R, R) float64, Gram matrix of the centred points (zero rows for far points).
        s: (R,) float64, each point's total coefficient over the original rows (1 for a row).
        far: (R,) bool, points touching a far row.
        a: (R,) float64 ``(|v_i|^2 - T_ii) / 2``, or None until a rule needs absolute norms
            (:meth:`with_norms`); without it only affine quantities (differences of points whose
            coefficients sum to the same total) are available.
        kernel: which path computed the Gram matrix: "native" or "torch".
    """

    T: Tensor
    s: Tensor
    far: Tensor
    a: Tensor | None = None
    kernel: str = "torch"

    @property
    def n(self) -> int:
        return int(self.T.shape[0])

    def with_norms(self, sq_norms_R: Tensor) -> Geometry:
        """The same points with their squared norms known (enables absolute quantities)."""
        a = ((sq_norms_R - self.T.diagonal()) / 2).masked_fill(self.far, 0.0)
        return Geometry(T=self.T, s=self.s, far=self.far, a=a, kernel=self.kernel)

    def _a(self) -> Tensor:
        if self.a is None:
            raise RuntimeError("absolute geometry needed: call Rows.geometry(absolute=True)")
        return self.a

    def mixed(self, C_MR: Tensor) -> Geometry:
        """Geometry of the M points ``C_MR @ points`` (a pre-aggregator's output rows)."""
        C = C_MR.to(self.T.dtype)
        far = (
            (C[:, self.far] != 0).any(1)
            if bool(self.far.any())
            else torch.zeros_like(C[:, 0], dtype=torch.bool)
        )
        # Mixing often yields identical rows (NNM neighbourhoods that differ only in order): compute
        # each distinct row once so that equal rows get bitwise-equal geometry (exact ties).
        U, inv = torch.unique(C, dim=0, return_inverse=True)
        TU = U @ self.T @ U.T
        TU = (TU + TU.T) * 0.5
        a = None if self.a is None else (U @ self.a)[inv]
        return Geometry(T=TU[inv][:, inv], s=(U @ self.s)[inv], far=far, a=a, kernel=self.kernel)

    def sq_norms(self) -> Tensor:
        """(R,) squared norms; +inf for far points. Needs the absolute geometry."""
        out = (self.T.diagonal() + 2 * self.s * self._a()).clamp_min(0)
        return out.masked_fill(self.far, float("inf"))

    def _uniform_s(self) -> bool:
        """All points have the same total coefficient (up to rounding: then the s terms vanish)."""
        return (
            bool(torch.allclose(self.s, self.s[:1].expand_as(self.s), rtol=1e-12, atol=0)) if self.n else True
        )

    def sq_dists(self) -> Tensor:
        """(R, R) pairwise squared distances; +inf to and from far points, 0 on the diagonal."""
        d = self.T.diagonal()
        out = d[:, None] + d[None, :] - 2 * self.T
        if not self._uniform_s():
            a = self._a()
            out = out + 2 * (self.s[:, None] - self.s[None, :]) * (a[:, None] - a[None, :])
        out = out.clamp_min(0)
        far2 = self.far[:, None] | self.far[None, :]
        out = out.masked_fill(far2, float("inf"))
        out.fill_diagonal_(0.0)
        return out

    def sq_dists_to(self, e_R: Tensor) -> Tensor:
        """(R,) squared distances from every point to the combination ``e_R @ points``.

        ``e_R`` must put no weight on far points; far points get +inf.
        """
        Te = self.T @ e_R
        out = self.T.diagonal() - 2 * Te + e_R @ Te
        es = e_R @ self.s
        if self.a is not None:
            a = self.a
            out = out + 2 * (self.s - es) * (a - e_R @ a)
        elif not (self._uniform_s() and abs(float(es) - float(self.s[0])) <= 1e-9 * max(1.0, abs(float(es)))):
            self._a()  # raises: not an affine combination
        return out.clamp_min(0).masked_fill(self.far, float("inf"))

    def norm_of(self, e_R: Tensor, *, difference: bool = False) -> Tensor:
        """|sum_r e_r p_r|. ``difference=True`` promises that ``e`` sums to zero (a difference of
        two affine combinations), which needs only T; otherwise the absolute geometry is needed."""
        sq = e_R @ (self.T @ e_R)
        if not difference:
            sq = sq + 2 * (e_R @ self.s) * (e_R @ self._a())
        return sq.clamp_min(0).sqrt()


def row_norms(X_ND: Tensor) -> Tensor:
    """(N,) float64 L2 norms of the rows in one pass (inf where a row has a non-finite value)."""
    parts = map_column_chunks(
        lambda s, e: torch.linalg.vector_norm(X_ND[:, s:e], dim=1).to(torch.float64),
        X_ND.shape[1],
        1 << 16,
        X_ND.device,
    )
    sq = parts[0].square() if len(parts) == 1 else torch.stack(parts).square().sum(0)
    reduced = reduce_partial(sq)  # sharded aggregation: over every process's columns
    if reduced is sq:
        return parts[0] if len(parts) == 1 else sq.sqrt()
    return reduced.sqrt()


def centred_gram(X_ND: Tensor, extras_KD: Tensor | None = None, *, block: int | None = None) -> Geometry:
    """The (affine) :class:`Geometry` of the rows of ``X_ND`` followed by the rows of ``extras_KD``.

    One pass over the data: per column block, centre on a reference row, one float32 GEMM,
    accumulate in float64. Memory: one (R, block) buffer per worker thread.
    """
    N, D = X_ND.shape
    K = 0 if extras_KD is None else int(extras_KD.shape[0])
    R = N + K
    B = min(block or max(1 << 14, min(1 << 16, GRAM_BLOCK_VALUES // max(1, R))), D)
    native = _native_gram(X_ND, extras_KD)
    if native:
        B = min(block or NATIVE_BLOCK, D)
        parts = map_column_chunks(
            lambda s, e: _gram_chunk_native(X_ND, extras_KD, s, e, B), D, B, X_ND.device
        )
    else:
        parts = map_column_chunks(lambda s, e: _gram_chunk(X_ND, extras_KD, s, e, B), D, B, X_ND.device)
    T = reduce_partial(torch.stack([p[0] for p in parts]).sum(0))  # sharded: over every process's columns
    bad = reduce_partial(torch.stack([p[1] for p in parts]).any(0).to(torch.float64)) > 0
    T = (T + T.T) * 0.5  # exactly symmetric: equal distances compare equal (ties are shared)
    far = bad | ~(T.diagonal() <= FAR_NORM**2)
    if bool(far.any()):
        T[far] = 0.0
        T[:, far] = 0.0
    ones_R = torch.ones(R, dtype=torch.float64, device=X_ND.device)
    return Geometry(T=T, s=ones_R, far=far, kernel="native" if native else "torch")


def _padded_rows(n: int) -> int:
    """Rows to give the GEMM: MKL's small-GEMM kernels are up to 4x slower when the row count is
    just below a multiple of 8 (measured: 15 rows 12 GFLOP/s, 16 rows 53), so pad with zero rows
    when that adds at most an eighth."""
    up = -(-n // 8) * 8
    return up if up - n <= max(1, n // 8) else n


_FAR2_32 = FAR_NORM**2  # 1e36 < float32 max: a block's centred squared norm above it marks a far row


def _gram_chunk(
    X_ND: Tensor, extras_KD: Tensor | None, start: int, stop: int, B: int
) -> tuple[Tensor, Tensor]:
    """(T, bad) accumulated over the columns [start, stop).

    The reference row of a block is the row of median centred norm in the previous block (so no
    extra pass is needed to choose it); the first block, or a block where the reference itself
    turns out non-finite, chooses by the rows' norms instead. Rows whose centred squared norm in
    a block is not finite or above 1e36 are zeroed there (one more GEMM, only then) and marked
    bad. The extras get their own thin GEMMs so that the rows' GEMM keeps its fast shape.
    """
    N = X_ND.shape[0]
    K = 0 if extras_KD is None else int(extras_KD.shape[0])
    P = _padded_rows(N)
    dev, dt = X_ND.device, X_ND.dtype
    buf = torch.zeros(P + K, B, dtype=dt, device=dev)  # rows N..P stay zero (padding)
    T = torch.zeros(P + K, P + K, dtype=torch.float64, device=dev)
    bad = torch.zeros(N + K, dtype=torch.bool, device=dev)
    mid = (N - 1) // 2
    ref: int | None = None
    for s in range(start, stop, B):
        e = min(stop, s + B)
        Xb = X_ND[:, s:e]
        bx = buf[:P, : e - s]
        for attempt in range(2):
            if ref is None or attempt:
                ref = _norm_median_row(Xb, mid)
            torch.sub(Xb, Xb[ref], out=bx[:N])
            G = torch.mm(bx, bx.t())
            ok = G.diagonal()[:N] <= _FAR2_32  # False for NaN and inf
            if (bool(ok[ref]) and 2 * int(ok.sum()) > N) or attempt:
                break  # else the reference itself is bad in this block: choose again by norms
        if not bool(ok.all()):
            bad[:N] |= ~ok
            bx[:N].masked_fill_(~ok[:, None], 0.0)
            G = torch.mm(bx, bx.t())
        T[:P, :P] += G
        if extras_KD is not None:
            be = buf[P:, : e - s]
            torch.sub(extras_KD[:, s:e], Xb[ref], out=be)
            Gee = torch.mm(be, be.t())
            oke = Gee.diagonal() <= _FAR2_32
            if not bool(oke.all()):
                bad[N:] |= ~oke
                be.masked_fill_(~oke[:, None], 0.0)
                Gee = torch.mm(be, be.t())
            cross = torch.mm(bx, be.t())
            T[:P, P:] += cross
            T[P:, :P] += cross.t()
            T[P:, P:] += Gee
        # Next block's reference: the row of median centred norm here (a typical row).
        d = G.diagonal()[:N].masked_fill(~ok, float("inf"))
        ref = int(d.argsort()[mid]) if bool(torch.isfinite(d[d.argsort()[mid]])) else None
    keep = torch.cat([torch.arange(N, device=dev), torch.arange(P, P + K, device=dev)])
    return T[keep][:, keep], bad


#: Rows above this stay on the torch path (the kernel's accumulators grow as R^2).
NATIVE_MAX_ROWS = 256


def _native_gram(X_ND: Tensor, extras_KD: Tensor | None) -> bool:
    """Whether the native kernel serves this input (it exists, CPU float32, wide enough)."""
    mats = [X_ND] if extras_KD is None else [X_ND, extras_KD]
    R = sum(int(m.shape[0]) for m in mats)
    if R > NATIVE_MAX_ROWS or X_ND.shape[1] < native_build.MIN_COLUMNS:
        return False
    if any(m.device.type != "cpu" or m.dtype != torch.float32 or m.stride(1) != 1 for m in mats):
        return False
    return native_gram.gram_available()


#: Columns per block of the native path: the reference row and the far rows are decided per block
#: (float64 sums inside the kernel keep wide blocks exact); wider blocks mean less Python per pass.
NATIVE_BLOCK = 1 << 18


def _gram_chunk_native(
    X_ND: Tensor, extras_KD: Tensor | None, start: int, stop: int, B: int
) -> tuple[Tensor, Tensor]:
    """:func:`_gram_chunk` with each block's centring and product in one native call."""
    N = X_ND.shape[0]
    rows: list[Tensor] = list(X_ND.unbind(0)) + ([] if extras_KD is None else list(extras_KD.unbind(0)))
    kern = native_gram.gram_kernel(rows)
    assert kern is not None
    R = len(rows)
    T = torch.zeros(R, R, dtype=torch.float64)
    bad = torch.zeros(R, dtype=torch.bool)
    mid = (N - 1) // 2
    ref: int | None = None
    for s in range(start, stop, B):
        e = min(stop, s + B)
        if ref is None:
            ref = _norm_median_row(X_ND[:, s:e], mid)
        G = kern(ref, s, e)
        d = G.diagonal()
        if bool((d <= _FAR2_32).all()):  # the usual case: every row finite and near
            T += G
            ref = int(d[:N].argsort()[mid])
            continue
        ok = d <= _FAR2_32  # False for NaN and inf
        if not (bool(ok[ref]) and 2 * int(ok[:N].sum()) > N):  # the reference itself is bad here
            ref = _norm_median_row(X_ND[:, s:e], mid)
            G = kern(ref, s, e)
            ok = G.diagonal() <= _FAR2_32
        bad |= ~ok
        G = kern(ref, s, e, skip=(~ok).tolist())
        T += G
        dn = G.diagonal()[:N].masked_fill(~ok[:N], float("inf"))
        ref = int(dn.argsort()[mid]) if bool(torch.isfinite(dn[dn.argsort()[mid]])) else None
    return T, bad


def _norm_median_row(Xb: Tensor, mid: int) -> int:
    """The row of median norm among the finite rows (the smallest if fewer than half are finite)."""
    nb = torch.linalg.vector_norm(Xb, dim=1).to(torch.float64)
    ok = nb <= FAR_NORM
    order = nb.masked_fill(~ok, float("inf")).argsort()
    return int(order[mid]) if bool(ok[order[mid]]) else int(order[0])
