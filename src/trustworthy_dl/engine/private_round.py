"""The privacy layer's two places in a data-parallel round: the nodes' private updates (in each
node's process) and the coordinator's accounting of the data they used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from trustworthy_dl.engine.setup import Experiment

__all__ = ["account_round", "honest_update", "node_rows", "private_compute"]


def node_rows(
    exp: Experiment, nodes: Sequence[int], r: int, batches: Sequence[tuple[Tensor, Tensor]], out_RD: Tensor
) -> Tensor:
    """Each local node's row of the round (private when privacy is on); returns the losses."""
    assert exp.computer is not None
    if exp.privacy is None:
        return exp.computer.compute(batches, out_RD)
    return private_compute(exp, nodes, r, batches, out_RD)


def honest_update(exp: Experiment, node: int, r: int, x: Tensor, y: Tensor) -> Tensor:
    """What an honest ``node`` sends for batch (x, y) in round r: the verifier's re-computation
    (with privacy on, its noise replayed)."""
    if exp.privacy is not None:
        return exp.privacy.mechanism.replay(node, r, x, y)
    assert exp.computer is not None
    return exp.computer.gradient(x, y)[0]


def private_compute(
    exp: Experiment, nodes: Sequence[int], r: int, batches: Sequence[tuple[Tensor, Tensor]], out_RD: Tensor
) -> Tensor:
    """Each local node's row: the private update, except for a Byzantine node in a round it
    attacks, which computes the plain gradient (an attacker adds no noise; its row is corrupted
    next). Before its attack starts (and between intermittent attacks) a Byzantine node follows
    the protocol, noise included: a node lying in wait looks honest. Returns the losses."""
    assert exp.privacy is not None and exp.computer is not None
    losses = torch.empty(len(batches))
    attacking = [exp.adversary.is_byzantine(n) and exp.adversary.active(r) for n in nodes]
    honest = [i for i, a in enumerate(attacking) if not a]
    for i in (i for i, a in enumerate(attacking) if a):
        losses[i] = exp.computer.compute([batches[i]], out_RD[i : i + 1])[0]
    if honest:
        rows = out_RD if len(honest) == len(nodes) else torch.empty_like(out_RD[: len(honest)])
        losses[honest] = exp.privacy.mechanism.update_many(
            [nodes[i] for i in honest], r, [batches[i] for i in honest], rows
        )
        if rows is not out_RD:
            out_RD[honest] = rows
    return losses


def account_round(exp: Experiment, assignment: list[list[int]], r: int) -> dict[str, Any] | None:
    """Step the accountant once per batch any node drew this round; the round's record (None with
    privacy off).

    Every node's batches count, Byzantine or not and present or not: a coordinator cannot tell
    who is Byzantine, and a late row may still have been seen on the wire. A node holding no shard
    (on probation) computed on its home shards' next batch: that is a use of those shards too. A
    Byzantine node attacking this round sends a corrupted plain gradient without noise (see
    :func:`private_compute`): a shard of an honest home node it computed on (it holds one after a
    reassignment) has lost its guarantee (epsilon inf from then on; the simulation knows who
    attacks, a deployment would not).
    """
    if exp.privacy is None:
        return None
    acc = exp.privacy.accountant
    if acc is None:
        return {"epsilon": None}
    adv = exp.adversary
    attacking = adv.active(r)
    for node, shards in enumerate(assignment):
        for shard in shards or exp.scheduler.home_shards(node):
            acc.step(shard)
            if attacking and adv.is_byzantine(node) and not adv.is_byzantine(exp.scheduler.home[shard]):
                acc.expose(shard)
    eps = acc.epsilon()
    return {"epsilon": round(eps, 4) if eps != float("inf") else "inf"}
