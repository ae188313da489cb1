"""Coordinator <-> ranks point-to-point exchange with a deadline, over torch.distributed.

Data parallelism under torchrun sends each round's rows to the coordinator (rank 0) and the
aggregate back with point-to-point messages rather than collectives, so that one slow or dead
rank cannot hold the others:

* each rank sends a small float64 ``meta`` message (per local node: present flag, loss, parameter
  digest) and, if any of its nodes is present, its (R, D) rows;
* the coordinator receives from every rank in a background thread per rank and waits at most
  ``timeout_s`` (None: no deadline). A rank that misses the deadline has its rows missing for
  the round (its messages still land later, in buffers of their own, and are dropped); a rank
  whose connection fails (its process died) raises :class:`RankFailure`, naming it;
* the coordinator's results go back as point-to-point sends whose completion is waited for in
  the background, so a straggler receives them when it wakes without holding the others;
* a rank told that it missed a round catches up: while the results of its next round are
  already waiting (:meth:`StarExchange.results_ready`), it skips that round (reports its rows
  absent, applies the results) instead of computing rows that would arrive late again;
* a rank from which nothing at all (not even a late message) has arrived for ``stall_s`` seconds
  is declared failed.

Tags are ``4 * round + k``: a late message of round r can never be taken for round r + 1's.
Only tensors cross: nothing received is unpickled.

Legend: N nodes, R rows per rank, D flat parameters, K meta columns.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from trustworthy_dl.engine.comm import Traffic

__all__ = ["RankFailure", "RoundRows", "StarExchange"]

CATCH_UP_GRACE_S = 0.005  # how long a lagging rank waits to see whether a round's results are already there


def stall_seconds(timeout_s: float | None) -> float:
    """Silence after which a rank that keeps missing the deadline is declared failed."""
    return max(30.0, 10.0 * (timeout_s or 0.0))


class RankFailure(RuntimeError):
    """A rank's process died or stopped answering; the run must restart without losing its results."""

    def __init__(self, rank: int, round: int, reason: str) -> None:
        super().__init__(f"rank {rank} failed in round {round}: {reason}")
        self.rank, self.round, self.reason = rank, round, reason


@dataclass
class RoundRows:
    """What reached the coordinator in one round."""

    rows_ND: Tensor
    meta_NK: Tensor
    present_N: Tensor
    late_ranks: list[int] = field(default_factory=list)


class _Receive:
    """One rank's messages of one round, received in a daemon thread."""

    def __init__(
        self,
        src: int,
        tag: int,
        meta_RK: Tensor,
        rows_RD: Tensor,
        cv: threading.Condition,
        heard: dict[int, float],
    ) -> None:
        self.meta_RK, self.rows_RD = meta_RK, rows_RD
        self.done = False
        self.error: str | None = None
        self._cv, self._heard = cv, heard
        threading.Thread(target=self._run, args=(src, tag), daemon=True).start()

    def _run(self, src: int, tag: int) -> None:
        try:
            dist.recv(self.meta_RK, src=src, tag=tag)
            if bool((self.meta_RK[:, 0] > 0.5).any()):
                dist.recv(self.rows_RD, src=src, tag=tag + 1)
        except Exception as err:  # any transport error means the peer is gone
            self.error = str(err).splitlines()[0][:300]
        with self._cv:
            self.done = True
            if self.error is None:
                self._heard[src] = time.monotonic()
            self._cv.notify_all()


class _DownReceive:
    """A round's results, received in a daemon thread (a lagging rank looks ahead with it)."""

    def __init__(self, tensors: list[Tensor], tag: int) -> None:
        self.tensors = [torch.empty_like(t) for t in tensors]
        self.error: BaseException | None = None
        self.event = threading.Event()
        threading.Thread(target=self._run, args=(tag,), daemon=True).start()

    def _run(self, tag: int) -> None:
        try:
            for i, t in enumerate(self.tensors):
                dist.recv(t, src=0, tag=tag + i)
        except BaseException as err:  # re-raised on the main thread by take()
            self.error = err
        self.event.set()

    def take(self, tensors: list[Tensor]) -> None:
        self.event.wait()
        if self.error is not None:
            raise self.error
        for dst, src in zip(tensors, self.tensors, strict=True):
            dst.copy_(src)


class StarExchange:
    """Point-to-point rows up, results down, between rank 0 and every other rank."""

    def __init__(
        self, rank: int, world_size: int, rows_per_rank: int, num_nodes: int, traffic: Traffic
    ) -> None:
        self.traffic = traffic
        self.rank, self.world_size = rank, world_size
        self.rows_per_rank, self.num_nodes = rows_per_rank, num_nodes
        self._cv = threading.Condition()
        self._pending: dict[int, list[_Receive]] = {k: [] for k in range(1, world_size)}
        self._heard = dict.fromkeys(range(1, world_size), time.monotonic())
        self._ahead: dict[int, _DownReceive] = {}

    # ------------------------------------------------------------------ rows up

    def gather(
        self, local_RD: Tensor, meta_RK: Tensor, round: int, timeout_s: float | None
    ) -> RoundRows | None:
        """Send this rank's rows (non-coordinators) or collect every rank's (coordinator)."""
        tag = 4 * round
        if self.rank != 0:
            if meta_RK.shape[0] < self.rows_per_rank:  # the last rank's short block: every message one shape
                pad = self.rows_per_rank - meta_RK.shape[0]
                meta_RK = torch.cat([meta_RK, meta_RK.new_zeros(pad, meta_RK.shape[1])])
                local_RD = torch.cat([local_RD, local_RD.new_zeros(pad, local_RD.shape[1])])
            works = [dist.isend(meta_RK.contiguous(), dst=0, tag=tag)]
            self.traffic.add(sent=meta_RK)
            if bool((meta_RK[:, 0] > 0.5).any()):
                works.append(dist.isend(local_RD.contiguous(), dst=0, tag=tag + 1))
                self.traffic.add(sent=local_RD)
            for w in works:
                if w is not None:
                    w.wait()
            return None
        r, k, d = self.rows_per_rank, meta_RK.shape[1], local_RD.shape[1]
        receives: dict[int, _Receive] = {}
        for src in range(1, self.world_size):
            self._pending[src] = [p for p in self._pending[src] if not p.done]
            if not self._pending[src]:  # not late: its silence counts from now (startup and the
                with self._cv:  # rounds it kept up with are not silence)
                    self._heard[src] = time.monotonic()
            receives[src] = _Receive(
                src,
                tag,
                torch.zeros(r, k, dtype=meta_RK.dtype),
                # zeros, not empty: a short message from a faulty or Byzantine rank must not
                # leave the coordinator's uninitialised memory in a row
                torch.zeros(r, d, dtype=local_RD.dtype, device=local_RD.device),
                self._cv,
                self._heard,
            )
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while not all(x.done for x in receives.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cv.wait(timeout=left)
        rows_ND = torch.zeros(self.num_nodes, d, dtype=local_RD.dtype, device=local_RD.device)
        meta_NK = torch.zeros(self.num_nodes, k, dtype=meta_RK.dtype)
        n0 = min(r, self.num_nodes)
        rows_ND[:n0] = local_RD[:n0]
        meta_NK[:n0] = meta_RK[:n0]
        late: list[int] = []
        for src, rec in receives.items():
            lo, hi = src * r, min((src + 1) * r, self.num_nodes)
            if rec.error is not None:
                raise RankFailure(src, round, rec.error)
            if not rec.done:
                late.append(src)
                self._pending[src].append(rec)
                silent_s = time.monotonic() - self._heard[src]
                if silent_s > stall_seconds(timeout_s):
                    raise RankFailure(src, round, f"nothing received for {silent_s:.0f} s")
                continue
            meta_NK[lo:hi] = rec.meta_RK[: hi - lo]
            self.traffic.add(received=rec.meta_RK)
            if bool((rec.meta_RK[:, 0] > 0.5).any()):
                rows_ND[lo:hi] = rec.rows_RD[: hi - lo]
                self.traffic.add(received=rec.rows_RD)
        present_N = meta_NK[:, 0] > 0.5
        rows_ND[~present_N] = 0
        return RoundRows(rows_ND, meta_NK, present_N, late)

    # ------------------------------------------------------------------ results down

    def send_down(self, tensors: list[Tensor], round: int) -> None:
        """Coordinator: send each tensor to every rank; others: receive them in place, in order."""
        tag = 4 * round + 2
        if self.rank != 0:
            ahead = self._ahead.pop(round, None)
            if ahead is not None:
                ahead.take(tensors)
            else:
                for i, t in enumerate(tensors):
                    dist.recv(t, src=0, tag=tag + i)
            for t in tensors:
                self.traffic.add(received=t)
            return
        works = []
        for i, t in enumerate(tensors):
            frozen = t.detach().clone().contiguous()  # the next round rewrites t; a late rank reads this
            works += [(dist.isend(frozen, dst=dst, tag=tag + i), frozen) for dst in range(1, self.world_size)]
            self.traffic.sent += (self.world_size - 1) * frozen.numel() * frozen.element_size()
        # completion is awaited off the main thread: a straggler takes its copy when it wakes
        threading.Thread(target=_wait_all, args=(works,), daemon=True).start()

    def results_ready(self, tensors: list[Tensor], round: int) -> bool:
        """Non-coordinator: whether round ``round``'s results are already waiting (the coordinator
        finished that round without this rank). Starts receiving them either way; ``send_down``
        of that round then takes them."""
        ahead = self._ahead.get(round)
        if ahead is None:
            ahead = self._ahead[round] = _DownReceive(tensors, 4 * round + 2)
        return ahead.event.wait(CATCH_UP_GRACE_S)


def _wait_all(works: list[tuple[object, Tensor]]) -> None:
    for work, _ in works:
        with contextlib.suppress(Exception):  # a dead receiver is reported by the next gather
            work.wait()  # type: ignore[attr-defined]
