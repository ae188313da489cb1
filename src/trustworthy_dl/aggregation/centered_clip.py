"""CenteredClip (Karimireddy, He, Jaggi, "Learning from history for Byzantine robust
optimization", ICML 2021; iterated to a fixed point as in BTARD: Gorbunov, Borzunov, Diskin,
Ryabinin, "Secure distributed training at scale", ICML 2022).

Rule: starting from a centre v_0, repeat
``v <- v + sum_i w_i (x_i - v) min(1, tau / |x_i - v|)``
for ``iterations`` steps or until the step is shorter than ``tol * tau``.
The starting centre is the previous round's output (``init="previous"``, Karimireddy et al.; the
first round falls back to the medoid), the medoid of the rows (the row with the smallest sum of
distances to the others) or zero.
Tolerance: 2f < n (BTARD's analysis needs the Byzantine weight below 1/2).

Every iterate is ``v = c_0 v_0 + sum_j c_j x_j``, so the distances |x_i - v| follow from one Gram
matrix of [rows; v_0] (``_gram``): the iterations never touch the (n, D) data. ``weights_N`` are
honoured (the w_i, normalised). Rows with non-finite values (or norm above 1e18) are left out
(their clipped contribution, at most tau times their weight, is dropped).

State: the centre (``state_dict()["centre"]``) and the number of rounds run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from trustworthy_dl.aggregation._checks import NonNegInt, PosFloat, PosInt, Range, check_f, require
from trustworthy_dl.aggregation._rows import Rows, as_rows
from trustworthy_dl.aggregation.base import AGGREGATORS, AggResult
from trustworthy_dl.errors import ConfigError, NodeMessageError

__all__ = ["CenteredClip"]


@AGGREGATORS.register("centered_clip", "centeredclip", "cclip", "cc")
class CenteredClip:
    """Stateful CenteredClip: ``cc(updates_ND, weights_N=None, *, f=None) -> AggResult``."""

    def __init__(
        self,
        *,
        f: NonNegInt,
        tau: PosFloat = 1.0,
        iterations: PosInt = 100,
        tol: Annotated[float, Range(ge=0)] = 1e-6,
        init: Literal["previous", "medoid", "zero"] = "previous",
    ) -> None:
        self.f = check_f("centered_clip", f)
        self.tau, self.iterations, self.tol, self.init = float(tau), iterations, float(tol), init
        self.centre_D: Tensor | None = None
        self.rounds = 0

    def __call__(
        self, updates: Tensor | Rows, weights_N: Tensor | None = None, *, f: int | None = None
    ) -> AggResult:
        rows = as_rows(updates, weights_N, "centered_clip")
        f = self.f if f is None else check_f("centered_clip", f)
        n = rows.n
        require(2 * f < n, "centered_clip", f=f, n=n, condition="2f < n", stage=rows.stage)
        prev = self.centre_D
        use_prev = self.init == "previous" and prev is not None and prev.shape == (rows.D,)
        geo = None
        if use_prev:
            assert prev is not None
            geo = rows.geometry(prev.to(rows.X.dtype).unsqueeze(0))
            use_prev = not bool(geo.far[n])  # a non-finite (or huge) previous centre is not used
        if not use_prev:  # the rows' geometry is cached by the call above: no second pass
            absolute = self.init == "zero"  # the origin is not an affine combination
            geo = rows.geometry(absolute=absolute)
        assert geo is not None
        far = geo.far[:n]
        w = rows.weights.masked_fill(far, 0.0)
        if float(w.sum()) <= 0:
            raise NodeMessageError("centered_clip: every update is non-finite (or has zero weight)")
        w = w / w.sum()
        R = geo.n
        c = torch.zeros(R, dtype=torch.float64, device=w.device)  # v as a combination of the points
        if use_prev:
            c[n] = 1.0
            start = "previous"
        elif self.init == "zero":
            start = "zero"  # c = 0 is the origin (see Geometry)
        else:
            d2 = geo.sq_dists()[:n, :n].clamp_max(1e300)
            med = int(torch.argmin(d2.sum(1).masked_fill(far, float("inf"))))
            c[med] = 1.0
            start = "medoid"
        eye = torch.eye(R, n, dtype=torch.float64, device=w.device)
        its, step = 0, float("inf")
        for its in range(1, self.iterations + 1):  # noqa: B007
            dist = geo.sq_dists_to(c)[:n].sqrt()
            scale = torch.where(far, 0.0, torch.clamp(self.tau / dist, max=1.0))
            coef = w * scale  # weight of (x_i - v) in the step
            delta = eye @ coef - coef.sum() * c
            step = float(geo.norm_of(delta, difference=geo.a is None))
            c = c + delta
            if step <= self.tol * self.tau:
                break
        e_rows = c[:n]
        c_prev = float(c[n]) if use_prev else 0.0
        extras = (prev, c_prev) if (use_prev and prev is not None) else None
        keep = self.centre_D
        if keep is not None and keep.shape == (rows.D,) and keep.dtype == rows.X.dtype:
            # reuse the buffer (a fresh (D,) allocation costs page faults), filled in the same pass;
            # it may be the previous centre that pass reads: each chunk is read before it is written
            value = rows.combine(e_rows, extras=extras, copy_to=keep)
        else:
            value = rows.combine(e_rows, extras=extras)
            self.centre_D = value.detach().clone()
        self.rounds += 1
        clipped = int(((self.tau / geo.sq_dists_to(c)[:n].sqrt()) < 1).logical_and(~far).sum())
        info = {"n": n, "iterations": its, "last_step": step, "start": start, "clipped": clipped}
        return rows.result(value, e_rows, w > 0, info)

    def state_dict(self) -> dict[str, Any]:
        return {"centre": None if self.centre_D is None else self.centre_D.clone(), "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"centre", "rounds"}
        if unknown:
            raise ConfigError(
                f"centered_clip state has unknown keys {sorted(unknown)}; valid: centre, rounds"
            )
        centre = state.get("centre")
        self.centre_D = None if centre is None else torch.as_tensor(centre).clone()
        self.rounds = int(state.get("rounds", 0))
