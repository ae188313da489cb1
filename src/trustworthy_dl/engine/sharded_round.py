"""One data-parallel round with no single aggregation point (``aggregation.mode: sharded``).

Every process sends each node's column slices to the process owning them (all-to-all), runs the
coordinator's step on its slice inside :func:`~trustworthy_dl.aggregation.sharding.shard_reduction`
(the Gram matrix and row norms are all-reduced, so the rule decides with global distances), and
the slices of the aggregate are all-gathered. Trust and scheduling are deterministic given the
rows' presence, so every process keeps the same state without a broadcast; the coordinator logs.
The security layer runs on every process too, on its slice, with its statistics summed over the
processes (``aggregation/sharding.py``); a suspect's re-computation is done by every process, each
comparing its own slice (W times the verification compute, no full row ever gathered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trustworthy_dl.aggregation.sharding import column_bounds, shard_reduction
from trustworthy_dl.engine.timer import PhaseTimer
from trustworthy_dl.security.monitor import ParameterMonitor

if TYPE_CHECKING:
    from trustworthy_dl.engine.loop import RoundLoop

__all__ = ["sharded_round"]


def sharded_round(loop: RoundLoop, r: int) -> dict[str, Any]:
    """A round with no single aggregation point (``aggregation.mode: sharded``): every process
    gets every node's slice of the columns, runs the coordinator's step on it (trust and
    scheduling are deterministic, so every process keeps the same state), and the slices of
    the aggregate are all-gathered. The coordinator only logs."""
    exp, comm = loop.exp, loop.comm
    timer = PhaseTimer()
    assignment = exp.scheduler.assignment()
    losses_R = loop._compute(r, assignment, timer)
    with timer("attack"):
        loop._attack_local(r)
    meta_NK = comm.all_gather_meta(loop._meta(losses_R, r))
    present_N = meta_NK[:, 0] > 0.5
    bounds = column_bounds(loop.agg_D.numel(), comm.world_size)
    with timer("gather"):
        rows_NDj = comm.scatter_columns(loop.local_RD, bounds)
    rec: dict[str, Any] = {"round": r, "epoch": r // exp.rounds_per_epoch}
    losses = meta_NK[present_N, 1].to(loop.local_RD.dtype)
    rec["loss"] = float(losses.mean()) if losses.numel() else float("nan")
    loop.agg_out = torch.empty(rows_NDj.shape[1], dtype=rows_NDj.dtype, device=rows_NDj.device)
    lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
    loop.recompute_cols = slice(lo, hi)  # every process re-computes a suspect and compares its slice
    tampered = loop._tampered(meta_NK, present_N) if exp.security is not None else []
    with shard_reduction(comm.all_reduce_sum, (lo, hi, loop.agg_D.numel())):
        rec.update(loop._coordinate(r, rows_NDj, present_N, assignment, tampered, timer).to_dict())
    with timer("broadcast"):
        loop.agg_D.copy_(comm.all_gather_columns(loop.agg_out, bounds))
    loop.public_active_N, loop.public_weights_N = exp.trust.active_N, exp.trust.weights_N()
    with timer("step"):
        rec["update_norm"] = float(loop.agg_D.norm())
        before_D = loop.prev_D.copy_(exp.flat.params_D.detach()) if loop.prev_D is not None else None
        rec["lr"] = exp.optimizer.step(loop.agg_D, r)
        if before_D is not None:
            rec.update(ParameterMonitor.stats(exp.flat.params_D.detach(), before_D))
    return loop._finish_round(r, rec, timer)
