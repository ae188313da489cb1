"""The communication seam: how node updates reach the trusted coordinator and results come back.

The round loop never branches on the backend; it calls this small interface:

* ``local_nodes``: the node ids this process computes for (all of them when simulated);
* ``exchange`` / ``send_down``: a data-parallel round's rows up to the coordinator with a deadline
  and a presence mask (missing rows: crashed, silent or late nodes), its results back down;
* ``broadcast``: send a tensor from the coordinator to every process, in place;
* ``reduce_sum``: sum a tensor over the processes onto the coordinator (pipelines: each rank
  fills the rows of the stages it holds, zeros elsewhere, so the sum is a gather);
* ``subgroup``: a process sub-group (the ranks holding one stage: a stage group's rows are
  reduced over them and the coordinator only);
* ``isend`` / ``recv``: point-to-point messages between the ranks holding neighbouring pipeline
  stages (activations forward, activation-gradients backward), tagged per micro-batch.

:class:`SimComm` is one process hosting all N nodes (the gather is free). :class:`TorchComm`
runs one process per rank under ``torchrun`` over ``torch.distributed`` (gloo on CPU, NCCL on
GPU); rank r hosts a contiguous block of ceil(N / world) nodes. Only tensors cross process
boundaries: nothing received from a node is ever unpickled.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from trustworthy_dl.engine.star_exchange import RoundRows, StarExchange
from trustworthy_dl.errors import ConfigError, NodeMessageError

__all__ = ["Comm", "SimComm", "TorchComm", "make_comm"]


@dataclass
class Traffic:
    """Bytes this process sent and received through the comm (payloads, both directions)."""

    sent: int = 0
    received: int = 0

    def add(self, sent: Tensor | None = None, received: Tensor | None = None) -> None:
        if sent is not None:
            self.sent += sent.numel() * sent.element_size()
        if received is not None:
            self.received += received.numel() * received.element_size()


class Comm(ABC):
    """Coordinator-centred collectives over the nodes of one run."""

    rank: int = 0
    world_size: int = 1
    backend_name: str = "simulated"

    def __init__(self, num_nodes: int) -> None:
        self.traffic = Traffic()
        if self.world_size > num_nodes:
            raise ConfigError(
                f"distributed.num_nodes={num_nodes} is smaller than the {self.world_size} processes launched; "
                "every process must host at least one node"
            )
        self.num_nodes = num_nodes
        self.rows_per_rank = math.ceil(num_nodes / self.world_size)

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    @property
    def shares_parameters(self) -> bool:
        """Whether every node computes with the coordinator's own parameter tensor (one process):
        then there is no node copy whose digest could differ."""
        return self.world_size == 1

    def nodes_of(self, rank: int) -> range:
        lo = rank * self.rows_per_rank
        return range(min(lo, self.num_nodes), min(lo + self.rows_per_rank, self.num_nodes))

    @property
    def local_nodes(self) -> range:
        return self.nodes_of(self.rank)

    def rank_of(self, node: int) -> int:
        """The process hosting ``node``."""
        return node // self.rows_per_rank

    def reduce_sum(self, tensor: Tensor, group: object = None) -> Tensor:
        """Sum ``tensor`` over the processes (of ``group``, default all) into the coordinator's copy
        (in place); returns it. A rank outside ``group`` leaves its tensor alone."""
        return tensor

    def subgroup(self, ranks: list[int]) -> object:
        """A process sub-group over ``ranks`` (those holding one stage, or one replica), made once
        and cached. Every process must ask for the same sub-groups in the same order."""
        return None

    def all_gather_rows(self, local_RD: Tensor, ranks: list[int]) -> Tensor:
        """The rows of every node hosted by ``ranks`` (ascending), stacked, on each of those ranks
        (the colluders' exchange). One process: its own rows."""
        return local_RD

    # ---- sharded aggregation (aggregation.mode=sharded): no single aggregation point

    def scatter_columns(self, local_RD: Tensor, bounds: list[int]) -> Tensor:
        """All-to-all: every node's columns ``[bounds[rank], bounds[rank + 1])``, (N, D_j), here."""
        return local_RD[:, bounds[self.rank] : bounds[self.rank + 1]]

    def all_gather_meta(self, meta_RK: Tensor) -> Tensor:
        """Every node's meta row (present, loss, ...), (N, K), on every process."""
        return meta_RK

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over the processes, in place, on every process."""
        return tensor

    def all_gather_columns(self, part_Dj: Tensor, bounds: list[int]) -> Tensor:
        """The full (D,) vector from every process's slice ``[bounds[j], bounds[j + 1])``."""
        return part_Dj

    def isend(self, tensor: Tensor, dst: int, tag: int) -> object:
        """Start sending ``tensor`` to rank ``dst``; returns a handle with ``wait()``."""
        raise RuntimeError(f"{type(self).__name__} hosts every node: there is no rank {dst} to send to")

    def recv(self, tensor: Tensor, src: int, tag: int) -> Tensor:
        """Receive into ``tensor`` (its shape and dtype are the protocol's) from rank ``src``."""
        raise RuntimeError(f"{type(self).__name__} hosts every node: there is no rank {src} to receive from")

    @abstractmethod
    def exchange(
        self, local_RD: Tensor, meta_RK: Tensor, round: int, timeout_s: float | None
    ) -> RoundRows | None:
        """Every node's row and meta (column 0: present) on the coordinator, absent rows zeroed
        and marked in ``present_N``; None elsewhere. Waits at most ``timeout_s`` for other ranks."""

    def send_down(self, tensors: list[Tensor], round: int) -> None:
        """The coordinator's round results to every process, in place (no-op in one process)."""

    def results_ready(self, tensors: list[Tensor], round: int) -> bool:
        """Whether round ``round``'s results already wait for this lagging process (never in one process)."""
        return False

    @abstractmethod
    def broadcast(self, tensor: Tensor) -> Tensor:
        """Overwrite ``tensor`` on every process with the coordinator's value; returns it."""

    def traffic_by_rank(self) -> list[Traffic] | None:
        """Every process's :class:`Traffic` on the coordinator (collective); None elsewhere."""
        return [self.traffic]

    def barrier(self) -> None:
        """Wait for every process (no-op when simulated)."""

    def close(self) -> None:
        """Release the process group (no-op when simulated)."""


class SimComm(Comm):
    """All N nodes live in this process; collectives are identities."""

    def exchange(self, local_RD: Tensor, meta_RK: Tensor, round: int, timeout_s: float | None) -> RoundRows:
        if local_RD.shape[0] != self.num_nodes or meta_RK.shape[0] != self.num_nodes:
            raise NodeMessageError(f"expected {self.num_nodes} rows, got {local_RD.shape[0]}")
        present_N = meta_RK[:, 0] > 0.5
        if not bool(present_N.all()):
            local_RD[~present_N] = 0
        return RoundRows(local_RD, meta_RK, present_N)

    def broadcast(self, tensor: Tensor) -> Tensor:
        return tensor


class TorchComm(Comm):
    """One process per rank over ``torch.distributed``; rank 0 is the trusted coordinator."""

    def __init__(self, num_nodes: int, *, backend: str = "auto", device: torch.device | None = None) -> None:
        if not dist.is_initialized():
            if backend == "auto":
                backend = (
                    "nccl"
                    if torch.cuda.is_available() and device is not None and device.type == "cuda"
                    else "gloo"
                )
            dist.init_process_group(
                backend=backend,
                store=_attempt_store(),
                rank=_env_int("RANK"),
                world_size=_env_int("WORLD_SIZE"),
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend_name = f"torch.distributed/{dist.get_backend()}"
        super().__init__(num_nodes)
        self._groups: dict[tuple[int, ...], object] = {}
        self._group_ranks: dict[object, tuple[int, ...]] = {}
        self._star = StarExchange(self.rank, self.world_size, self.rows_per_rank, num_nodes, self.traffic)

    def exchange(
        self, local_RD: Tensor, meta_RK: Tensor, round: int, timeout_s: float | None
    ) -> RoundRows | None:
        n_local = len(self.local_nodes)
        if local_RD.shape[0] != n_local or meta_RK.shape[0] != n_local:
            raise NodeMessageError(
                f"rank {self.rank}: expected {n_local} local rows, got {local_RD.shape[0]}"
            )
        return self._star.gather(local_RD, meta_RK, round, timeout_s)

    def send_down(self, tensors: list[Tensor], round: int) -> None:
        self._star.send_down(tensors, round)

    def results_ready(self, tensors: list[Tensor], round: int) -> bool:
        return self._star.results_ready(tensors, round)

    def broadcast(self, tensor: Tensor) -> Tensor:
        dist.broadcast(tensor, src=0)
        if self.is_coordinator:
            self.traffic.sent += (self.world_size - 1) * tensor.numel() * tensor.element_size()
        else:
            self.traffic.add(received=tensor)
        return tensor

    def reduce_sum(self, tensor: Tensor, group: object = None) -> Tensor:
        if group is None:
            dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
        elif self.rank in self._group_ranks[group]:
            dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]
        else:
            return tensor
        if self.is_coordinator:
            self.traffic.add(received=tensor)
        else:
            self.traffic.add(sent=tensor)
        return tensor

    def subgroup(self, ranks: list[int]) -> object:
        key = tuple(sorted(set(ranks)))
        if key not in self._groups:
            group = dist.new_group(list(key))  # collective: every rank makes every group
            self._groups[key] = group
            self._group_ranks[group] = key
        return self._groups[key]

    def all_gather_rows(self, local_RD: Tensor, ranks: list[int]) -> Tensor:
        ranks = sorted(set(ranks))
        r, d = self.rows_per_rank, local_RD.shape[1]
        send = torch.zeros(r, d, dtype=local_RD.dtype, device=local_RD.device)
        send[: local_RD.shape[0]] = local_RD
        bufs = [torch.empty_like(send) for _ in ranks]
        group = None if len(ranks) == self.world_size else self.subgroup(ranks)
        dist.all_gather(bufs, send, group=group)  # type: ignore[arg-type]
        others = (len(ranks) - 1) * send.numel() * send.element_size()
        self.traffic.sent += others
        self.traffic.received += others
        return torch.cat([b[: len(self.nodes_of(k))] for b, k in zip(bufs, ranks, strict=True)])

    def scatter_columns(self, local_RD: Tensor, bounds: list[int]) -> Tensor:
        w, d = self.world_size, local_RD.shape[1]
        if bounds[-1] != d or len(bounds) != w + 1:
            raise ValueError(f"column bounds {bounds} do not cut {d} columns into {w} slices")
        counts = [len(self.nodes_of(k)) for k in range(w)]
        widths = [bounds[j + 1] - bounds[j] for j in range(w)]
        send = torch.cat([local_RD[:, bounds[j] : bounds[j + 1]].reshape(-1) for j in range(w)])
        mine = widths[self.rank]
        recv = torch.empty(sum(counts) * mine, dtype=local_RD.dtype, device=local_RD.device)
        dist.all_to_all_single(
            recv, send, [c * mine for c in counts], [local_RD.shape[0] * wd for wd in widths]
        )
        own = local_RD.shape[0] * mine * local_RD.element_size()  # this process's own slice stays here
        self.traffic.sent += send.numel() * send.element_size() - own
        self.traffic.received += recv.numel() * recv.element_size() - own
        return recv.view(sum(counts), mine)

    def all_gather_meta(self, meta_RK: Tensor) -> Tensor:
        return self.all_gather_rows(meta_RK, list(range(self.world_size)))

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        self.traffic.add(tensor, tensor)
        return tensor

    def all_gather_columns(self, part_Dj: Tensor, bounds: list[int]) -> Tensor:
        widest = max(bounds[j + 1] - bounds[j] for j in range(self.world_size))
        send = torch.zeros(widest, dtype=part_Dj.dtype, device=part_Dj.device)
        send[: part_Dj.numel()] = part_Dj
        bufs = [torch.empty_like(send) for _ in range(self.world_size)]
        dist.all_gather(bufs, send)
        others = (self.world_size - 1) * send.numel() * send.element_size()
        self.traffic.sent += others
        self.traffic.received += others
        return torch.cat([b[: bounds[j + 1] - bounds[j]] for j, b in enumerate(bufs)])

    def isend(self, tensor: Tensor, dst: int, tag: int) -> object:
        self.traffic.add(sent=tensor)
        return dist.isend(tensor.contiguous(), dst=dst, tag=tag)

    def recv(self, tensor: Tensor, src: int, tag: int) -> Tensor:
        dist.recv(tensor, src=src, tag=tag)
        self.traffic.add(received=tensor)
        return tensor

    def traffic_by_rank(self) -> list[Traffic] | None:
        mine = torch.tensor([float(self.traffic.sent), float(self.traffic.received)], dtype=torch.float64)
        if not self.is_coordinator:
            dist.gather(mine, dst=0)
            return None
        bufs = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.gather(mine, gather_list=bufs, dst=0)
        return [Traffic(int(b[0]), int(b[1])) for b in bufs]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str) -> int:
    return int(os.environ[name])


def _attempt_store() -> dist.Store:
    """torchrun's rendezvous store, with keys under this restart attempt's own prefix.

    After torchrun restarts the group (a rank died), the new processes meet in the same store;
    without a fresh prefix gloo reads the dead attempt's peer addresses and cannot connect.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        _env_int("MASTER_PORT"),
        _env_int("WORLD_SIZE"),
        is_master=not agent_hosts and _env_int("RANK") == 0,
        timeout=timedelta(minutes=10),
    )
    return dist.PrefixStore(f"tdl/attempt-{attempt}", store)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def make_comm(
    num_nodes: int, *, backend: str, dist_backend: str = "auto", device: torch.device | None = None
) -> Comm:
    """The simulated comm, or torch.distributed when launched under torchrun / asked for."""
    if launched_by_torchrun():
        return TorchComm(num_nodes, backend=dist_backend, device=device)
    if backend == "torch":
        raise ConfigError(
            "distributed.backend='torch' needs one process per rank: launch with "
            "`torchrun --standalone --nproc-per-node K -m trustworthy_dl run CONFIG` or `tdl launch -n K CONFIG`"
        )
    return SimComm(num_nodes)
