"""Cross-validation of pipeline stages held by other processes (torchrun).

In one process the verifier reads every stage's messages directly. Across processes the
coordinator first tells the stage holders which micro-batches it will re-run (the verifier's
``plan``: seeded by the round, weighted to watched nodes), then the messages it needs come to it
point-to-point, each reported by a *neighbour* of the judged stage, never by the stage itself:

* the input of stage s: what stage s-1's holder sent (stage 0: the data, which the coordinator
  draws itself);
* the output of stage s: what stage s+1's holder received (the last stage: its logits, from its
  own holder: they go nowhere else, and its activation-gradient is checked upstream anyway);
* the activation-gradient stage s received: what stage s+1's holder sent;
* the activation-gradient stage s sent: what stage s-1's holder received.

So a Byzantine holder cannot show the coordinator an honest copy while sending tampered messages
down the pipeline. With them the coordinator re-runs the stage on its own parameters
(:meth:`PipelineVerifier.judge`). Besides: each holder reports a digest of the parameters it
computed each of its stages with, and the messages it rejected on receipt (non-finite: evidence
against the sender).

Legend: M replicas, S stages, m micro-batches, u = m * S + s a unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.engine.pipeline_exec import HolderPlan, Hop, ReplicaPass
from trustworthy_dl.security.monitor import tensor_digest
from trustworthy_dl.security.pipeline_verify import PipelineCheck

if TYPE_CHECKING:
    from trustworthy_dl.engine.pipeline_loop import PipelineLoop

__all__ = ["RemoteChecks", "collect_remote_checks"]

_TAG = 20_000_000  # message tags of this exchange (stage messages use 0..2e7)


@dataclass
class RemoteChecks:
    """What the coordinator learned about the stages held by other processes this step."""

    check: PipelineCheck | None = None
    tampered_units: set[int] = field(default_factory=set)
    rejected: list[tuple[int, int, int, str]] = field(
        default_factory=list
    )  # (replica, sender stage, micro, why)
    tainted: set[int] = field(default_factory=set)  # replicas dropped without blame (ReplicaPass.tainted)


def _fields(s: int, S: int) -> list[tuple[str, int | None, str]]:
    """(hop field of the judged stage s, stage whose holder reports it or None: the coordinator's
    own data, the reporter's hop field)."""
    out: list[tuple[str, int | None, str]] = [("x_in", s - 1, "y_out") if s > 0 else ("x_in", None, "x_in")]
    out.append(("y_out", s + 1, "x_in") if s < S - 1 else ("y_out", s, "y_out"))
    if s < S - 1:
        out.append(("g_in", s + 1, "g_out"))
    if s > 0:
        out.append(("g_out", s - 1, "g_in"))
    return out


def _spec(
    loop: PipelineLoop, passes: list[ReplicaPass], m: int, s: int, k: int, name: str
) -> tuple[tuple[int, ...], torch.dtype]:
    """(shape, dtype) of hop field ``name`` of stage s, micro-batch k (fixed by the protocol): a
    stage's output and the gradient it receives have its output's spec, its input and the gradient
    it sends the previous stage's."""
    x = passes[m].hops[0][k].x_in
    trail, dtype = loop.pp.runner.output_specs(x)[s if name in ("y_out", "g_in") else s - 1]
    return (len(x), *trail), dtype


def collect_remote_checks(
    loop: PipelineLoop, r: int, passes: list[ReplicaPass], plans: list[HolderPlan], holder: list[int]
) -> RemoteChecks | None:
    """Collective over every process: returns the coordinator's :class:`RemoteChecks` (None elsewhere)."""
    comm, pp, exp = loop.comm, loop.pp, loop.exp
    S, M = pp.num_stages, pp.replicas
    me, coord = comm.rank, comm.is_coordinator
    micro = len(passes[0].hops[0]) if passes else 0
    # ---- 1. which micro-batches are re-run (coordinator's choice, sent to all)
    samples_L3 = torch.zeros(M * S * max(micro, 1), 3, dtype=torch.int64)
    count = torch.zeros(1, dtype=torch.int64)
    if coord and pp.verifier is not None:
        chosen = pp.verifier.plan(M, S, micro, holder, r)
        count[0] = len(chosen)
        if chosen:
            samples_L3[: len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
    comm.broadcast(count)
    comm.broadcast(samples_L3)
    samples = [tuple(int(v) for v in row) for row in samples_L3[: int(count[0])].tolist()]

    def rank_of_stage(m: int, t: int) -> int:
        return comm.rank_of(holder[pp.unit(m, t)])

    tag = _TAG
    pending: list[Any] = []
    got: dict[tuple[int, int, int], dict[str, Tensor | None]] = {}
    # ---- 2. the sampled messages, each from a neighbour of the judged stage
    for m, s, k in samples:
        fields: dict[str, Tensor | None] = {}
        for name, src_stage, src_field in _fields(s, S):
            tag += 1
            if src_stage is None:  # the data: every process drew the same batch
                fields[name] = getattr(passes[m].hops[0][k], src_field)
                continue
            src = rank_of_stage(m, src_stage)
            if src == 0 and coord:
                fields[name] = getattr(passes[m].hops[src_stage][k], src_field)
            elif src == me:
                t = getattr(passes[m].hops[src_stage][k], src_field)
                pending.append(comm.isend(t.detach().contiguous(), 0, tag))
            elif coord:
                shape, dtype = _spec(loop, passes, m, s, k, name)
                fields[name] = comm.recv(torch.zeros(shape, dtype=dtype), src, tag)
        if coord:
            got[(m, s, k)] = fields
    # ---- 3. digests of the parameters each holder computed with, and rejected messages
    digests: dict[int, Tensor] = {}
    for u, node in enumerate(holder if pp.monitor_params else []):
        tag += 1
        src = comm.rank_of(node)
        if src != me and not coord:
            continue
        if src == me:
            cols = pp.staged.cols[u % S]
            tampered = plans[u].params_D
            d = tensor_digest(tampered if tampered is not None else exp.flat.params_D.detach()[cols])
            if coord:
                digests[u] = d
            else:
                pending.append(comm.isend(d, 0, tag))
        else:
            digests[u] = comm.recv(torch.zeros(32, dtype=torch.uint8), src, tag)
    cap = M * S * max(micro, 1) * 2
    mine = [(m, s, k) for m, rp in enumerate(passes) for s, k, _ in rp.rejected]
    mine += [(m, -1, k) for m, rp in enumerate(passes) for _, k, _ in rp.tainted]  # stage -1: no blame
    report = torch.full((1 + 3 * cap,), -1, dtype=torch.int64)
    report[0] = len(mine)
    if mine:
        report[1 : 1 + 3 * len(mine)] = torch.tensor(mine, dtype=torch.int64).flatten()
    rejected: list[tuple[int, int, int, str]] = []
    tainted: set[int] = set()
    if coord:
        rejected = [(m, s, k, why) for m, rp in enumerate(passes) for s, k, why in rp.rejected]
        tainted = {m for m, rp in enumerate(passes) if rp.tainted}
        for src in range(1, comm.world_size):
            theirs = comm.recv(torch.full_like(report, -1), src, _TAG - 1)
            n = min(max(int(theirs[0]), 0), cap)  # a malformed report cannot index past its entries
            for i in range(n):
                m, s, k = (int(v) for v in theirs[1 + 3 * i : 4 + 3 * i])
                if not (0 <= m < M and -1 <= s < S and 0 <= k < max(micro, 1)):
                    continue
                if s < 0:
                    tainted.add(m)
                else:
                    rejected.append((m, s, k, f"rank {src} received a non-finite message"))
    else:
        pending.append(comm.isend(report, 0, _TAG - 1))
    for h in pending:
        h.wait()
    if not coord:
        return None
    # ---- 4. the coordinator judges
    out = RemoteChecks(rejected=rejected, tainted=tainted)
    if pp.verifier is not None:
        hops = {
            key: Hop(
                x_in=f["x_in"],  # type: ignore[arg-type]
                weight=passes[key[0]].hops[key[1]][key[2]].weight,
                target=passes[key[0]].hops[S - 1][key[2]].target if key[1] == S - 1 else None,
                y_out=f.get("y_out"),
                g_in=f.get("g_in"),
                g_out=f.get("g_out"),
            )
            for key, f in got.items()
        }
        out.check = pp.verifier.judge(pp.runner, hops, holder)
    for u, d in digests.items():
        ref = tensor_digest(exp.flat.params_D.detach()[pp.staged.cols[u % S]])
        if not torch.equal(d, ref):
            out.tampered_units.add(u)
    return out
