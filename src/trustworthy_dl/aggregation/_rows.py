"""The input of every rule: N node updates, possibly mixed by pre-aggregators, never copied.

A :class:`Rows` is ``M`` virtual rows ``Y = C_MN @ X_ND`` over the round's ``N`` original updates
(``C`` is None for the identity). Pre-aggregators (NNM, bucketing, clipping) are linear maps of
the rows once their data-dependent choices are made, so they only update ``C``: the (M, D) output
is never materialised. Rules read what they need:

* distance-based rules: :meth:`Rows.geometry` (one blocked Gram pass, cached and shared by every
  stage of a pipeline);
* coordinate-wise rules: the rows block by block (``_sortnet``), mixing each block on the fly;
* everyone: :meth:`Rows.combine` (the output as a combination of the original rows, one gemv) and
  :meth:`Rows.result` (the :class:`AggResult`, with weights and selection per original node).

Legend: N original nodes, M current rows, D flat parameters, K extra vectors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation import _native as native_build
from trustworthy_dl.aggregation import _native_mix as native_mix
from trustworthy_dl.aggregation._checks import check_updates, check_weights
from trustworthy_dl.aggregation._gram import FAR_NORM, Geometry, centred_gram, row_norms
from trustworthy_dl.aggregation._parallel import map_column_chunks
from trustworthy_dl.aggregation.base import AggResult

__all__ = ["Rows", "as_rows"]


class _Cache:
    """Per-round statistics of X shared by every stage of a pipeline."""

    def __init__(self) -> None:
        self.norms_N: Tensor | None = None
        self.geometry: Geometry | None = None


class Rows:
    """M virtual rows ``coef_MN @ X_ND`` with per-row weights (summing to 1)."""

    def __init__(
        self,
        X_ND: Tensor,
        weights_N: Any = None,
        *,
        rule: str = "aggregator",
        _coef: Tensor | None = None,
        _cache: _Cache | None = None,
        _stages: tuple[str, ...] = (),
    ) -> None:
        self.X = check_updates(X_ND, rule) if _cache is None else X_ND
        self.N = int(self.X.shape[0])
        self.D = int(self.X.shape[1])
        self.coef = _coef
        n = self.N if _coef is None else int(_coef.shape[0])
        self.weights = weights_N if _cache is not None else check_weights(weights_N, n, rule, self.X.device)
        self.stages = _stages
        self._cache = _cache if _cache is not None else _Cache()

    # ------------------------------------------------------------------ shape and mixing

    @property
    def n(self) -> int:
        """Number of current rows M."""
        return self.N if self.coef is None else int(self.coef.shape[0])

    @property
    def stage(self) -> str:
        """The pre-aggregation stages applied so far, for error messages ('' if none)."""
        return " + ".join(self.stages)

    def coefficients(self) -> Tensor:
        """(M, N) float64 mixing matrix (the identity if no pre-aggregator ran)."""
        if self.coef is None:
            return torch.eye(self.N, dtype=torch.float64, device=self.X.device)
        return self.coef

    def mix(self, C_KM: Tensor, weights_K: Tensor, stage: str) -> Rows:
        """New rows ``C_KM @ self``; ``weights_K`` must sum to 1. Shares the cached statistics."""
        C = C_KM.to(device=self.X.device, dtype=torch.float64)
        coef = C if self.coef is None else C @ self.coef
        return Rows(self.X, weights_K, _coef=coef, _cache=self._cache, _stages=(*self.stages, stage))

    # ------------------------------------------------------------------ statistics

    def _norms_N(self) -> Tensor:
        c = self._cache
        if c.norms_N is None:
            c.norms_N = row_norms(self.X)
        return c.norms_N

    def _far_N(self) -> Tensor:
        if self._cache.geometry is not None:
            return self._cache.geometry.far
        nrm = self._norms_N()
        return ~(nrm <= FAR_NORM)

    def far(self) -> Tensor:
        """(M,) bool: rows touching an update with a non-finite value or norm above FAR_NORM."""
        far_N = self._far_N()
        if self.coef is None:
            return far_N
        if not bool(far_N.any()):
            return torch.zeros(self.n, dtype=torch.bool, device=self.X.device)
        return (self.coef[:, far_N] != 0).any(1)

    def _unit_sums(self) -> bool:
        # as strict as Geometry._uniform_s: a sum off by more than rounding (a row clipped by a hair)
        # needs the absolute geometry, or the distances would miss their (s_i - s_j) term
        return self.coef is None or bool(
            torch.allclose(self.coef.sum(1), torch.ones_like(self.coef[:, 0]), rtol=1e-12, atol=0)
        )

    def geometry(self, extras_KD: Tensor | None = None, *, absolute: bool = False) -> Geometry:
        """Geometry of the M current rows, followed by ``extras_KD`` if given (one Gram pass).

        ``absolute`` also provides norms (one more pass over the data, cached); it is implied when
        the rows are not affine combinations of the updates (after clipping).
        """
        c = self._cache
        absolute = absolute or not self._unit_sums()
        if extras_KD is not None:
            base = centred_gram(self.X, extras_KD)
            if c.geometry is None:  # the rows' part is what a later stage would compute anyway
                N = self.N
                c.geometry = Geometry(base.T[:N, :N], base.s[:N], base.far[:N], kernel=base.kernel)
            if absolute:
                q_e = row_norms(extras_KD).square()
                base = base.with_norms(torch.cat([self._sq_norms_N(), q_e]))
            if self.coef is None:
                return base
            K = int(extras_KD.shape[0])
            C = torch.zeros(self.n + K, self.N + K, dtype=torch.float64, device=self.X.device)
            C[: self.n, : self.N] = self.coef
            C[self.n :, self.N :] = torch.eye(K, dtype=torch.float64, device=self.X.device)
            return base.mixed(C)
        if c.geometry is None:
            c.geometry = centred_gram(self.X)
        if absolute and c.geometry.a is None:
            c.geometry = c.geometry.with_norms(self._sq_norms_N())
        return c.geometry if self.coef is None else c.geometry.mixed(self.coef)

    def _sq_norms_N(self) -> Tensor:
        nrm = self._norms_N()
        return (nrm * nrm).masked_fill(~(nrm <= FAR_NORM), 0.0)

    def sq_norms(self) -> Tensor:
        """(M,) float64 squared norms of the current rows (+inf for far rows)."""
        if self.coef is None:
            nrm = self._norms_N()
            return (nrm * nrm).masked_fill(self.far(), float("inf"))
        return self.geometry(absolute=True).sq_norms()

    # ------------------------------------------------------------------ output

    def materialize(self) -> Tensor:
        """The (M, D) rows as a new tensor (one GEMM; rules never need this)."""
        if self.coef is None:
            return self.X.clone()
        native = self._materialize_native()
        if native is not None:
            return native
        # Mixtures repeat (NNM neighbourhoods often coincide): multiply each distinct row once.
        U, inv = torch.unique(self.coef, dim=0, return_inverse=True)
        if U.shape[0] == self.n:
            U, inv = self.coef, None
        C = U.to(self.X.dtype)
        used = (C != 0).any(0)
        X = self.X
        if bool((self._far_N() & ~used).any()):  # 0 * NaN would leak into every row: skip them
            idx = used.nonzero().flatten()
            C = C[:, idx]
        else:
            idx = None
        Y = torch.empty(self.n, self.D, dtype=X.dtype, device=X.device)
        B = 1 << 14

        def chunk(start: int, stop: int) -> None:
            buf = torch.empty(C.shape[0], B, dtype=X.dtype, device=X.device)
            for s in range(start, stop, B):
                e = min(stop, s + B)
                Xc = X[:, s:e] if idx is None else X[:, s:e].index_select(0, idx)
                if inv is None:
                    torch.mm(C, Xc, out=Y[:, s:e])
                else:  # distinct rows into a cached buffer, then spread to their copies
                    torch.mm(C, Xc, out=buf[:, : e - s])
                    torch.index_select(buf[:, : e - s], 0, inv, out=Y[:, s:e])

        map_column_chunks(chunk, self.D, B, X.device)
        return Y

    def _materialize_native(self) -> Tensor | None:
        """``materialize`` by the native mixing kernel (one read, streaming writes), or None."""
        X = self.X
        if X.device.type != "cpu" or X.dtype != torch.float32 or self.D < native_build.MIN_COLUMNS:
            return None
        assert self.coef is not None
        used = (self.coef != 0).any(0).nonzero().flatten().tolist()
        if not used or len(used) > native_mix.MAX_INPUTS:
            return None
        kern = native_mix.mix_kernel()
        if kern is None:
            return None
        C = self.coef[:, used].to(torch.float32).contiguous()
        inputs = [X[j] for j in used]
        Y = torch.empty(self.n, self.D, dtype=X.dtype, device=X.device)
        outs = list(Y.unbind(0))
        map_column_chunks(lambda s, e: kern(inputs, C, outs, s, e), self.D, 1 << 16, X.device)
        return Y

    def node_coefficients(self, e_M: Tensor) -> Tensor:
        """(N,) float64: the coefficient of each original update in ``e_M @ rows``."""
        e = e_M.to(device=self.X.device, dtype=torch.float64)
        return e if self.coef is None else e @ self.coef

    def combine(
        self, e_M: Tensor, extras: tuple[Tensor, float] | None = None, *, copy_to: Tensor | None = None
    ) -> Tensor:
        """The (D,) vector ``e_M @ rows`` (+ ``coef * vector`` for ``extras=(vector, coef)``).

        Rows with a zero coefficient are never read, so they may hold NaN or Inf. ``copy_to``, a
        (D,) tensor, also receives the result, chunk by chunk while it is in cache (a stateful
        rule's copy of its output, without a second pass).
        """
        a = self.node_coefficients(e_M)
        X = self.X
        nz = torch.nonzero(a).flatten().tolist()
        dense = len(nz) > max(2, self.N // 2)
        use_mv = dense and (len(nz) == self.N or not bool(self._far_N().any()))
        a_t = a.to(X.dtype)
        vals = a[nz].tolist()
        extra = None
        if extras is not None and extras[1] != 0:
            extra = (extras[0].to(X.dtype), float(extras[1]))
        out = torch.empty(self.D, dtype=X.dtype, device=X.device)

        B = 1 << 16  # output block kept in cache while every term is added to it

        def chunk(start: int, stop: int) -> None:
            for s in range(start, stop, B):
                e = min(stop, s + B)
                o = out[s:e]
                if use_mv:
                    torch.mv(X[:, s:e].t(), a_t, out=o)
                elif nz:
                    torch.mul(X[nz[0], s:e], vals[0], out=o)
                    for j, v in zip(nz[1:], vals[1:]):
                        o.add_(X[j, s:e], alpha=v)
                else:
                    o.zero_()
                if extra is not None:
                    o.add_(extra[0][s:e], alpha=extra[1])
                if copy_to is not None:
                    copy_to[s:e].copy_(o)

        map_column_chunks(chunk, self.D, B, X.device)
        return out

    def result(self, value_D: Tensor, e_M: Tensor, selected_M: Tensor, info: dict[str, Any]) -> AggResult:
        """The AggResult with weights and selection mapped back to the original nodes.

        ``e_M`` are the rows' coefficients (or shares) in the aggregate; a node is selected when a
        selected row gives it a non-zero coefficient.
        """
        weights_N = self.node_coefficients(e_M)
        sel = selected_M.to(device=self.X.device, dtype=torch.bool)
        if self.coef is None:
            selected_N = sel.clone()
        elif bool(sel.any()):
            selected_N = (self.coef[sel] != 0).any(0)
        else:
            selected_N = torch.zeros(self.N, dtype=torch.bool, device=self.X.device)
        if self._cache.geometry is not None and "kernel" not in info:  # a distance-based rule
            info = {**info, "kernel": self._cache.geometry.kernel}
        return AggResult(value_D=value_D, weights_N=weights_N, selected_N=selected_N, info=info)


def as_rows(updates: Tensor | Rows, weights_N: Any = None, rule: str = "aggregator") -> Rows:
    """Wrap a (N, D) tensor (and optional weights) as :class:`Rows`; pass Rows through."""
    if isinstance(updates, Rows):
        if weights_N is not None:
            raise ValueError(f"{rule}: pass weights inside Rows, not alongside")
        return updates
    return Rows(updates, weights_N, rule=rule)
