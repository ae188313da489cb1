"""The ``security.redundancy`` section: DETOX / ByzShield replication with majority vote."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trustworthy_dl.config_base import _Section

__all__ = ["Placement", "RedundancyConfig"]

#: attack.placement: random Byzantine ids, or the worst case against the redundancy placement
Placement = Literal["random", "worst_case"]


class RedundancyConfig(_Section):
    scheme: Literal["none", "detox", "mols", "ramanujan1", "ramanujan2"] = Field(
        "none", description="Placement of the round's data files on nodes (none: no replication)."
    )
    replication: int = Field(3, ge=1, le=64, description="Copies of every file (r), on r distinct nodes.")
    vote: Literal["exact", "tolerance"] = Field(
        "exact", description="Copies agree when bitwise equal (exact) or within `tolerance` (relative L2)."
    )
    tolerance: float = Field(1e-5, ge=0, description="Relative L2 distance under which two copies agree.")
    params: dict[str, int] = Field(
        default_factory=dict,
        description="Scheme parameters: detox files_per_group, ramanujan2 files_per_node.",
    )
