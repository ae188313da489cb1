"""One replica's pass through its pipeline: micro-batches flow through the stage holders.

Each stage of each replica is held by a node. The executor runs the schedule's actions in tick
order (:mod:`~trustworthy_dl.engine.pipeline_schedule`); a forward receives the previous stage's
activations, a backward the next stage's activation-gradients, and each stage accumulates the
gradient of its own parameters into its row of the stage's update group. What crossed each
boundary is kept as a :class:`Hop` for the verifier, which re-runs a stage on exactly what it
received and compares with what it sent.

A holder computes with the coordinator's parameters unless it tampers with them, and may tamper
with what it sends (:mod:`~trustworthy_dl.attacks.pipeline`). Every message is checked on receipt
(:func:`check_message`): a wrong shape or dtype, NaN / Inf, or nothing at all is rejected as
evidence against the sender, and the verifier's re-computation of the sender's stage is used in
its place, so a bad message never crashes the run.

Stage computations use ``torch.func.functional_call`` over a leaf (D_s,) vector, so the stage's
parameter gradient arrives already flat (no concatenation) and a holder's tampered copy is just
another vector.

Legend: S stages, m micro-batches, D_s stage s's flat parameters, B micro-batch size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from trustworthy_dl.engine.pipeline_schedule import ticks
from trustworthy_dl.engine.staged import StagedModel
from trustworthy_dl.engine.task import Task

__all__ = ["HolderPlan", "Hop", "ReplicaPass", "StageRunner", "check_message"]

Tamper = Callable[[Tensor], Tensor]


@dataclass
class Hop:
    """What one stage of one replica received and sent for one micro-batch.

    ``x_in``: the input it received (stage 0: the data). ``y_out``: its output as sent (last
    stage: its logits, kept for verification). ``g_in``: the activation-gradient it received (last
    stage: None, it starts from the loss). ``g_out``: the activation-gradient it sent upstream
    (stage 0: None). ``target``: the labels (last stage). ``weight``: the micro-batch's share of
    the replica's batch (the loss is sum_k weight_k * loss_k).
    """

    x_in: Tensor
    weight: float
    target: Tensor | None = None
    y_out: Tensor | None = None
    g_in: Tensor | None = None
    g_out: Tensor | None = None


@dataclass
class HolderPlan:
    """How the holder of one stage behaves this round (all None: honestly)."""

    params_D: Tensor | None = None  # a tampered copy of its parameters
    activation: Tamper | None = None
    gradient: Tamper | None = None


@dataclass
class ReplicaPass:
    """The result of one replica's step: its loss, per-stage hops and rejected messages."""

    loss: float
    hops: list[list[Hop]]  # [stage][micro-batch]
    rejected: list[tuple[int, int, str]] = field(default_factory=list)  # (sender stage, micro, why)
    # non-finite messages an honest sender would have sent too (its input was already wrong): the
    # replica is dropped, the sender is not blamed (the stage upstream is cross-validation's case)
    tainted: list[tuple[int, int, str]] = field(default_factory=list)


def check_message(msg: Tensor | None, like: Tensor) -> str | None:
    """Why ``msg`` cannot stand for a tensor shaped like ``like`` (None if it can)."""
    if msg is None:
        return "nothing was sent"
    if not isinstance(msg, Tensor):
        return f"a {type(msg).__name__}, not a tensor"
    if msg.dtype != like.dtype:
        return f"dtype {msg.dtype}, expected {like.dtype}"
    if msg.shape != like.shape:
        return f"shape {tuple(msg.shape)}, expected {tuple(like.shape)}"
    # one sum is cheaper than an element-wise test; only a non-finite sum (NaN / Inf inside, or an
    # overflow of huge finite values) pays for the exact test
    if (
        msg.is_floating_point()
        and not bool(torch.isfinite(msg.sum()))
        and not bool(torch.isfinite(msg).all())
    ):
        return "non-finite values"
    return None


class StageTransport:
    """Messages between the processes holding one replica's stages (torch.distributed).

    ``ranks[s]`` is the rank of stage s's holder. A message between two stages on the same rank
    is handed over directly; across ranks it is an ``isend`` / ``recv`` tagged by (direction,
    stage, micro-batch), so a receiver never takes one message for another. Only tensors travel;
    their shape and dtype are fixed by the protocol (the receiver allocates them). The receiver
    checks each message: one with NaN / Inf is recorded as rejected (evidence against the sender,
    reported to the coordinator) and zeros stand in for it; the replica's rows are then dropped
    from the step's aggregation, so what stood in does not matter.
    """

    def __init__(self, comm: Any, ranks: list[int]) -> None:
        self.comm, self.ranks = comm, ranks
        self._pending: list[Any] = []

    def is_local(self, stage: int) -> bool:
        return self.ranks[stage] == self.comm.rank

    @staticmethod
    def tag(kind: str, stage: int, micro: int) -> int:
        return (0 if kind == "F" else 1) * 10_000_000 + stage * 10_000 + micro

    def send(self, t: Tensor, to_stage: int, tag: int) -> None:
        self._pending.append(self.comm.isend(t.detach().contiguous(), self.ranks[to_stage], tag))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, from_stage: int, tag: int) -> Tensor:
        return self.comm.recv(
            torch.zeros(shape, dtype=dtype), self.ranks[from_stage], tag
        )  # a short message: zeros

    def finish(self) -> None:
        for handle in self._pending:
            handle.wait()
        self._pending.clear()


class StageRunner:
    """Forward and backward of single stages, with the coordinator's or a holder's parameters."""

    def __init__(self, staged: StagedModel, task: Task) -> None:
        self.staged, self.task = staged, task
        self.num_stages = staged.num_stages
        self._out: list[tuple[tuple[int, ...], torch.dtype]] | None = None

    def output_specs(self, x_sample: Tensor) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Each stage's output (shape after the batch dimension, dtype), from a one-sample dry run."""
        if self._out is None:
            specs = []
            with torch.no_grad():
                h = x_sample[:1]
                for s in range(self.num_stages):
                    h = self.recompute_output(s, Hop(x_in=h, weight=1.0))
                    specs.append((tuple(h.shape[1:]), h.dtype))
            self._out = specs
        return self._out

    def leaf_params(self, s: int, params_D: Tensor | None = None) -> Sequence[Tensor]:
        """The leaf tensors stage ``s`` computes with: the stage's own parameters (views of the
        coordinator's flat vector), or per-parameter leaves over a holder's copy ``params_D``."""
        flat = self.staged.flats[s]
        if params_D is None:
            return flat.params
        return [v.detach().requires_grad_(True) for v in flat.unflatten(params_D).values()]

    def forward(self, s: int, params: Sequence[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """(input leaf, output) of stage ``s`` on ``x`` with the leaf parameters ``params``."""
        x_leaf = x.detach().requires_grad_(s > 0 and x.is_floating_point())
        flat = self.staged.flats[s]
        if params is flat.params:
            return x_leaf, flat.model(x_leaf)
        return x_leaf, functional_call(flat.model, dict(zip(flat.names, params)), (x_leaf,))

    def backward(
        self, s: int, params: Sequence[Tensor], x_leaf: Tensor, y: Tensor, hop: Hop, out_D: Tensor
    ) -> Tensor | None:
        """Write the stage's parameter gradient of one micro-batch into ``out_D``; returns the input
        gradient (None for stage 0)."""
        inputs = [*params, x_leaf] if s > 0 else list(params)
        if s == self.num_stages - 1:
            assert hop.target is not None
            loss = self.task.loss(y, hop.target) * hop.weight
            grads = torch.autograd.grad(loss, inputs)
        else:
            assert hop.g_in is not None
            grads = torch.autograd.grad(y, inputs, grad_outputs=hop.g_in)
        k = len(params)
        torch.cat([g.reshape(-1) for g in grads[:k]], out=out_D)
        return grads[k] if s > 0 else None

    def recompute(self, s: int, hop: Hop) -> tuple[Tensor, Tensor | None, Tensor]:
        """A verifier's honest re-run of stage ``s`` on what ``hop`` received: (output, input
        gradient, parameter gradient)."""
        params = self.leaf_params(s)
        with self.buffers_kept(s):  # restored after the backward (autograd checks their versions)
            x_leaf, y = self.forward(s, params, hop.x_in)
            grad_D = torch.empty(self.staged.cols[s].stop - self.staged.cols[s].start, dtype=y.dtype)
            g_x = self.backward(s, params, x_leaf, y, hop, grad_D)
        return y.detach(), g_x, grad_D

    def recompute_messages(self, s: int, hop: Hop) -> tuple[Tensor, Tensor | None]:
        """What an honest holder of stage ``s`` sends for ``hop``: (output, activation-gradient or None
        for stage 0). The parameter gradient is not needed to check messages, so it is not computed
        (stage 0 runs its forward only)."""
        if s == 0:
            return self.recompute_output(s, hop), None
        with self.buffers_kept(s):
            x_leaf, y = self.forward(s, self.leaf_params(s), hop.x_in)
            if s == self.num_stages - 1:
                assert hop.target is not None
                (g_x,) = torch.autograd.grad(self.task.loss(y, hop.target) * hop.weight, [x_leaf])
            else:
                assert hop.g_in is not None
                (g_x,) = torch.autograd.grad(y, [x_leaf], grad_outputs=hop.g_in)
        return y.detach(), g_x

    @contextlib.contextmanager
    def buffers_kept(self, s: int) -> Iterator[None]:
        """Leave stage ``s``'s buffers (BatchNorm running statistics) as they were: a verifier's
        re-run is a check, not training (the buffers would otherwise depend on the verify rate)."""
        buffers = list(self.staged.flats[s].model.buffers())
        saved = [b.detach().clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in zip(buffers, saved):
                    b.copy_(v)

    def recompute_output(self, s: int, hop: Hop) -> Tensor:
        with torch.no_grad(), self.buffers_kept(s):
            p_D = self.staged.params_D.detach()[self.staged.cols[s]]
            flat = self.staged.flats[s]
            return functional_call(flat.model, flat.unflatten(p_D), (hop.x_in,))

    def run_replica(
        self,
        micro: list[tuple[Tensor, Tensor]],
        plans: list[HolderPlan],
        rows: list[Tensor],
        *,
        schedule: str,
        transport: StageTransport | None = None,
    ) -> ReplicaPass:
        """Run one replica's micro-batches; stage s's parameter gradient is written into ``rows[s]``.

        With a ``transport`` (one process per rank) this process runs only the stages it holds:
        their rows are filled, the others' are zero, and the loss counts only a local last stage.
        """
        S, m = self.num_stages, len(micro)
        local = [transport is None or transport.is_local(s) for s in range(S)]
        specs = self.output_specs(micro[0][0]) if transport is not None else None
        total = sum(len(x) for x, _ in micro)
        hops = [[Hop(x_in=micro[k][0], weight=len(micro[k][0]) / total) for k in range(m)] for _ in range(S)]
        for k in range(m):
            hops[S - 1][k].target = micro[k][1]
        p = [self.leaf_params(s, plans[s].params_D) if local[s] else None for s in range(S)]
        scratch = [torch.empty_like(row) for row in rows]
        live: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        loss = 0.0
        rejected: list[tuple[int, int, str]] = []
        tainted: list[tuple[int, int, str]] = []
        for row in rows:
            row.zero_()
        tick_list, _ = ticks(schedule, S, m)
        for tick in tick_list:
            for s, (kind, k) in tick:
                if not local[s]:
                    continue
                hop = hops[s][k]
                p_s = p[s]
                assert p_s is not None
                if kind == "F":
                    if s > 0 and not local[s - 1]:
                        assert transport is not None and specs is not None
                        trail, dtype = specs[s - 1]
                        got = transport.recv(
                            (len(micro[k][0]), *trail), dtype, s - 1, transport.tag("F", s, k)
                        )
                        why = check_message(got, got)  # checked on receipt, by the receiver
                        if why is not None:  # evidence against the sender; the replica is dropped
                            rejected.append((s - 1, k, why))
                            got = torch.zeros_like(got)
                        hop.x_in = got
                    x_leaf, y = self.forward(s, p_s, hop.x_in)
                    live[(s, k)] = (x_leaf, y)
                    sent = y.detach()
                    tamper = plans[s].activation
                    if tamper is not None and s < S - 1:
                        sent = tamper(sent)
                    hop.y_out = sent
                    if s < S - 1:
                        why = check_message(sent, y) if local[s + 1] else None  # remote: the receiver checks
                        if why is not None:  # blamed unless its honest output is non-finite too
                            (tainted if check_message(y.detach(), y) else rejected).append((s, k, why))
                            sent = self.recompute_output(s, hop)
                        if local[s + 1]:
                            hops[s + 1][k].x_in = sent
                        else:
                            assert transport is not None
                            transport.send(sent, s + 1, transport.tag("F", s + 1, k))
                    else:
                        loss += float(self.task.loss(y.detach(), hop.target)) * hop.weight  # type: ignore[arg-type]
                else:
                    x_leaf, y = live.pop((s, k))
                    if s < S - 1 and not local[s + 1]:
                        assert transport is not None
                        got = transport.recv(tuple(y.shape), y.dtype, s + 1, transport.tag("B", s, k))
                        why = check_message(got, got)
                        if why is not None:
                            rejected.append((s + 1, k, why))
                            got = torch.zeros_like(got)
                        hop.g_in = got
                    g_x = self.backward(s, p_s, x_leaf, y, hop, scratch[s])
                    rows[s].add_(scratch[s])
                    if s > 0:
                        assert g_x is not None
                        tamper_g = plans[s].gradient
                        sent_g = tamper_g(g_x) if tamper_g is not None else g_x
                        hop.g_out = sent_g
                        why = check_message(sent_g, g_x) if local[s - 1] else None
                        if why is not None:
                            (tainted if check_message(g_x, g_x) else rejected).append((s, k, why))
                            honest_g = self.recompute_messages(s, hop)[1]  # no parameter gradient needed
                            assert honest_g is not None
                            sent_g = honest_g
                        if local[s - 1]:
                            hops[s - 1][k].g_in = sent_g
                        else:
                            assert transport is not None
                            transport.send(sent_g, s - 1, transport.tag("B", s - 1, k))
        if transport is not None:
            transport.finish()
        return ReplicaPass(loss=loss, hops=hops, rejected=rejected, tainted=tainted)
