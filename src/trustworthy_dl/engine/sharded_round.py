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
    assignment, meta_RK = loop._node_work(r, timer)
    meta_NK = comm.all_gather_meta(meta_RK)
    present_N = meta_NK[:, 0] > 0.5
    bounds = column_bounds(loop.agg_D.numel(), comm.world_size)
    with timer("gather"):
        rows_NDj = comm.scatter_columns(loop.local_RD, bounds)
    rec: dict[str, Any] = {"round": r, "epoch": r // exp.rounds_per_epoch}
    rec["loss"] = loop._mean_loss(meta_NK, present_N)
    if loop.agg_out is None or loop.agg_out.shape[0] != rows_NDj.shape[1]:
        loop.agg_out = torch.empty(rows_NDj.shape[1], dtype=rows_NDj.dtype, device=rows_NDj.device)
    lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
    loop.recompute_cols = slice(lo, hi)  # every process re-computes a suspect and compares its slice
    tampered = loop._tampered(meta_NK, present_N) if exp.security is not None else []
    with shard_reduction(comm.all_reduce_sum, (lo, hi, loop.agg_D.numel())):
        rec.update(loop._coordinate(r, rows_NDj, present_N, assignment, tampered, timer).to_dict())
    with timer("broadcast"):
        loop.agg_D.copy_(comm.all_gather_columns(loop.agg_out, bounds))
    loop.public_active_N, loop.public_weights_N = exp.trust.active_N, exp.trust.weights_N()
    loop._step(r, rec, timer)
    return loop._finish_round(r, rec, timer)
