"""The coordinator's record of one data-parallel round: typed fields, one JSON object in metrics.jsonl.

Optional fields are written only when set (``security``, ``weights``, ``trust``, ``quarantined``:
not None; the event lists, ``skipped_update`` and ``aggregator``: not empty), in a fixed order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CoordinatorRecord"]


@dataclass
class CoordinatorRecord:
    """What the coordinator decided in one round.

    Attributes:
        security: the security layer's record (flags, re-computations, verdict), when it ran.
        quarantined_now / reinstated_now: nodes whose status changed this round.
        weights: trust weights of the aggregated rows (trust-weighted aggregation).
        skipped_update: why no update was applied (no trusted row).
        reassignments: shards moved this round.
        num_active / num_aggregated: trusted nodes, and rows that reached the aggregator.
        f_eff: the f the aggregator ran with.
        trust / quarantined: scores and the quarantined set after this round (security on).
        aggregator: the rule's own diagnostics (``AggResult.info``).
        faults: nodes whose row was missing (``absent``), newly so (``absent_now``), back (``back_now``).
        privacy: epsilon spent so far (worst shard) at the configured delta (privacy on).
    """

    num_active: int
    num_aggregated: int
    f_eff: int
    security: dict[str, Any] | None = None
    quarantined_now: list[int] = field(default_factory=list)
    reinstated_now: list[int] = field(default_factory=list)
    weights: list[float] | None = None
    skipped_update: str | None = None
    reassignments: list[dict[str, Any]] = field(default_factory=list)
    trust: list[float] | None = None
    quarantined: list[int] | None = None
    aggregator: dict[str, Any] | None = None
    faults: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None

    _ALWAYS = frozenset({"num_active", "num_aggregated", "f_eff"})
    _IF_SET = frozenset({"security", "weights", "trust", "quarantined"})  # written even when empty
    _ORDER = (
        "security",
        "quarantined_now",
        "reinstated_now",
        "weights",
        "skipped_update",
        "reassignments",
        "num_active",
        "num_aggregated",
        "f_eff",
        "trust",
        "quarantined",
        "aggregator",
        "faults",
        "privacy",
    )

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out: dict[str, Any] = {}
        for key in self._ORDER:
            v = values[key]
            if key in self._ALWAYS or (key in self._IF_SET and v is not None) or v:
                out[key] = v
        return out
