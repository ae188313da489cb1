"""What faults did to a run: missing rows (outages) and dead ranks (restarts), for summary.json.

* An **outage** is a node whose row was missing for one or more consecutive rounds: when it
  began, why (the injected fault's kind, or "timeout" for a row that missed the deadline), where
  its shards went, and when it was back (reinstated).
* A **restart** is a rank process that died: the coordinator names the rank and round in
  ``faults.jsonl`` (appended and flushed at once, before the process exits), and the restarted run
  adds how it resumed (from which checkpoint round, how many completed rounds were re-run). The
  records of re-run rounds stay in ``metrics.interrupted-<k>.jsonl``: no completed round is lost.

Legend: N nodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from trustworthy_dl.engine.faults import FaultSchedule

__all__ = ["FAULTS_FILE", "FaultLog"]

FAULTS_FILE = "faults.jsonl"


class FaultLog:
    """Outages seen by the coordinator, and the restart events of ``faults.jsonl``."""

    def __init__(self, schedule: FaultSchedule, out_dir: Path | None) -> None:
        self.schedule = schedule
        self.path = out_dir / FAULTS_FILE if out_dir is not None else None
        self.outages: list[dict[str, Any]] = []
        self._open: dict[int, dict[str, Any]] = {}

    def observe(self, r: int, present_N: Tensor, moves: list[dict[str, Any]]) -> dict[str, Any]:
        """Account round ``r``'s presence; returns the round record's fault fields (empty: none)."""
        absent = (~present_N.bool().cpu()).nonzero().flatten().tolist()
        back = [n for n in list(self._open) if n not in absent]
        for node in back:
            out = self._open.pop(node)
            out["back_round"] = r
        gone = [n for n in absent if n not in self._open]
        for node in gone:
            out = {
                "node": node,
                "cause": self.schedule.cause(node, r),
                "first_round": r,
                "back_round": None,
                "rounds_missing": 0,
                "shards_to": [],
            }
            self._open[node] = out
            self.outages.append(out)
        for node in absent:
            self._open[node]["rounds_missing"] += 1
        for m in moves:
            if m["reason"] == "inactive" and m["from_node"] in self._open:
                self._open[m["from_node"]]["shards_to"].append(m["to_node"])
        rec: dict[str, Any] = {}
        if absent:
            rec["absent"] = absent
        if gone:
            rec["absent_now"] = gone
        if back:
            rec["back_now"] = back
        return rec

    # ------------------------------------------------------------------ dead ranks

    def append(self, event: dict[str, Any]) -> None:
        """Append one event to faults.jsonl, flushed to disk before returning."""
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        return out

    def summary(self) -> dict[str, Any] | None:
        """The ``faults`` section of summary.json (None when nothing happened)."""
        events = self.events()
        if not self.outages and not events and not self.schedule.faults:
            return None
        failures = [e for e in events if e.get("event") == "rank_failed"]
        named = {e.get("attempt") for e in failures}
        # a group stopped by the launcher before the coordinator could name the dead rank
        failures += [
            {**e, "rank": None, "nodes": None}
            for e in events
            if e.get("event") == "group_stopped" and e.get("attempt") not in named
        ]
        resumes = [e for e in events if e.get("event") == "resumed"]
        return {
            "configured": [f.model_dump() for f in self.schedule.faults],
            "outages": self.outages,
            "rows_missing": sum(o["rounds_missing"] for o in self.outages),
            "rank_failures": failures,
            "restarts": resumes,
            "rounds_rerun": sum(int(e.get("rounds_rerun", 0)) for e in resumes),
            "note": "a missing row is evidence 'silent' (not Byzantine): the node is inactive that round, "
            "its shards move, it is reinstated when back; a dead rank restarts the group (torchrun) "
            "and the run resumes from its last checkpoint",
        }

    def state_dict(self) -> dict[str, Any]:
        return {"outages": [dict(o) for o in self.outages], "open": sorted(self._open)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outages = [dict(o) for o in state.get("outages", [])]
        open_nodes = set(state.get("open", []))
        self._open = {
            o["node"]: o for o in self.outages if o["node"] in open_nodes and o["back_round"] is None
        }
