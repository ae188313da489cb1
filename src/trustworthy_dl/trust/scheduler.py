"""Work-unit scheduler: which node holds which unit of work, and moving units off distrusted nodes.

A unit is a data shard (data parallelism) or one pipeline stage of one replica (model / hybrid
parallelism: unit ``m * S + s``); nodes beyond the units' homes are spares that hold nothing
until a unit needs a new home (least loaded first, so spares are taken before a trusted node
is given a second unit).

Each shard has a home node (shard s lives on node s % N; with as many shards as nodes, node i
holds shard i). When a node becomes inactive (quarantined, crashed) its shards move to active
nodes, least loaded first (ties to the lowest id), so that no training data is dropped from
the epoch; when the home node is active again its shards come back to it. Decisions depend only
on the masks given, never on timing, so a run and its resume reassign identically.

Every move is a :class:`ReassignmentEvent` with its cost in seconds: the time spent in the
``move`` callback through which the engine does the real work (rebuilding a data loader,
copying a pipeline stage), or of the bookkeeping alone when there is none.

Legend: N nodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

__all__ = ["ReassignmentEvent", "ShardScheduler"]

MoveFn = Callable[[int, int, int], object]  # (shard, from_node, to_node) -> ignored


@dataclass(frozen=True)
class ReassignmentEvent:
    """One shard moved from one node to another.

    Attributes:
        round: the round it happened in (None if the caller gave none).
        shard: the shard id.
        from_node, to_node: previous and new holder.
        reason: "inactive" (the holder was quarantined or is down) or "return" (back home).
        seconds: cost of the move (time in the ``move`` callback, or the bookkeeping).
    """

    round: int | None
    shard: int
    from_node: int
    to_node: int
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ShardScheduler:
    """Assignment of ``num_shards`` data shards to ``num_nodes`` nodes.

    Args:
        num_nodes: N.
        num_shards: shards in the epoch (default N); shard s's home is node s % N, so with
            fewer shards than nodes the extra nodes are spares.
        return_home: bring a unit back to its home node once that node is active again (data
            shards); pipeline stages stay where they moved (a move costs a parameter transfer).
    """

    def __init__(self, num_nodes: int, num_shards: int | None = None, *, return_home: bool = True) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        num_shards = num_nodes if num_shards is None else num_shards
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.num_nodes, self.num_shards = num_nodes, num_shards
        self.return_home = return_home
        self.home = [s % num_nodes for s in range(num_shards)]
        self.holder = list(self.home)

    def assignment(self) -> list[list[int]]:
        """Shards held by each node, ascending: ``assignment()[node]``."""
        out: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for shard, node in enumerate(self.holder):
            out[node].append(shard)
        return out

    def holder_of(self, shard: int) -> int:
        return self.holder[shard]

    def home_shards(self, node: int) -> list[int]:
        """Shards whose home is ``node`` (what a quarantined node on probation may compute on)."""
        return [s for s, h in enumerate(self.home) if h == node]

    def reassign(
        self,
        active_N: Tensor,
        *,
        round_idx: int | None = None,
        move: MoveFn | None = None,
    ) -> list[ReassignmentEvent]:
        """Bring shards home to active home nodes, then move shards off inactive holders.

        Args:
            active_N: bool (N,), nodes allowed to hold shards (``TrustManager.active_N``, and
                alive). With no active node nothing moves (there is nowhere to go).
            round_idx: recorded in the events.
            move: optional callback doing the real transfer, timed per event.
        """
        active = [bool(a) for a in active_N.reshape(-1).tolist()]
        if len(active) != self.num_nodes:
            raise ValueError(f"active_N has {len(active)} entries, expected {self.num_nodes}")
        if not any(active):
            return []
        events = []
        for shard in range(self.num_shards):
            home, cur = self.home[shard], self.holder[shard]
            if self.return_home and active[home] and cur != home:
                events.append(self._move(shard, home, "return", round_idx, move))
        load = [0] * self.num_nodes
        for node in self.holder:
            load[node] += 1
        for shard in range(self.num_shards):
            cur = self.holder[shard]
            if not active[cur]:
                target = min((n for n in range(self.num_nodes) if active[n]), key=lambda n: (load[n], n))
                load[cur] -= 1
                load[target] += 1
                events.append(self._move(shard, target, "inactive", round_idx, move))
        return events

    def _move(
        self, shard: int, to_node: int, reason: str, round_idx: int | None, move: MoveFn | None
    ) -> ReassignmentEvent:
        t0 = time.perf_counter()
        from_node = self.holder[shard]
        if move is not None:
            move(shard, from_node, to_node)
        self.holder[shard] = to_node
        return ReassignmentEvent(round_idx, shard, from_node, to_node, reason, time.perf_counter() - t0)

    def state_dict(self) -> dict[str, Any]:
        return {"num_shards": self.num_shards, "holder": list(self.holder)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        holder = [int(h) for h in state["holder"]]
        if int(state["num_shards"]) != self.num_shards or len(holder) != self.num_shards:
            raise ValueError(f"state has {len(holder)} shards, expected {self.num_shards}")
        if any(not 0 <= h < self.num_nodes for h in holder):
            raise ValueError(f"state assigns shards to nodes outside 0..{self.num_nodes - 1}: {holder}")
        self.holder = holder
