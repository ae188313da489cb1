"""A run's redundancy plan: the placement of K data files on N nodes, checked against the config,
and the tally of its votes (the summary's ``redundancy`` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trustworthy_dl.errors import ConfigError
from trustworthy_dl.security.redundancy.assignments import make_assignment
from trustworthy_dl.security.redundancy.worst_case import distorted, worst_case_distorted

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["RedundancyPlan", "build_plan", "check_redundancy"]


def check_redundancy(cfg: Config) -> None:
    """What a run with ``security.redundancy`` cannot combine with: a ConfigError naming it."""
    red = cfg.security.redundancy
    if red.scheme == "none":
        if cfg.attack.placement == "worst_case":
            raise ConfigError(
                "attack.placement=worst_case needs security.redundancy.scheme (the placement it attacks)"
            )
        return
    clashes = [
        (
            cfg.distributed.parallelism != "data",
            f"distributed.parallelism={cfg.distributed.parallelism!r} (data only)",
        ),
        (
            cfg.distributed.backend != "simulated",
            f"distributed.backend={cfg.distributed.backend!r} (simulated only)",
        ),
        (cfg.privacy.enabled, "privacy.enabled=true"),
        (cfg.security.attack_detection, "security.attack_detection=true (the vote replaces stage 1)"),
        (
            cfg.security.gradient_verification,
            "security.gradient_verification=true (the vote re-computes every file)",
        ),
        (cfg.aggregation.mode != "gather", f"aggregation.mode={cfg.aggregation.mode!r}"),
        (bool(cfg.faults), "faults"),
    ]
    bad = [what for hit, what in clashes if hit]
    if bad:
        raise ConfigError(f"security.redundancy.scheme={red.scheme!r} cannot run with {', '.join(bad)} yet")
    build_plan(cfg)  # the (N, r) check of the scheme


@dataclass
class RedundancyPlan:
    """``assignment_NK``: node i holds file j; the vote's settings; running tallies."""

    scheme: str
    replication: int
    assignment_NK: np.ndarray
    mode: str
    tolerance: float
    rounds: int = 0
    distorted_total: int = 0
    undecided_total: int = 0
    copies_total: int = 0
    # derived once from the placement: copy p is (node_P[p], file_P[p]); the copies of file j
    node_P: torch.Tensor = field(init=False)
    file_P: torch.Tensor = field(init=False)
    rows_of_file: list[list[int]] = field(init=False)
    first_copy_K: torch.Tensor = field(init=False)
    byzantine_ids: list[int] = field(default_factory=list)
    byzantine_wins: int = 0  # files the coalition's copies outvote (when it attacks)

    def __post_init__(self) -> None:
        nodes, files = np.nonzero(self.assignment_NK)  # row-major: node by node
        self.node_P = torch.as_tensor(nodes, dtype=torch.long)
        self.file_P = torch.as_tensor(files, dtype=torch.long)
        self.rows_of_file = [np.flatnonzero(files == j).tolist() for j in range(self.num_files)]
        self.first_copy_K = torch.tensor([rows[0] for rows in self.rows_of_file], dtype=torch.long)

    @property
    def num_files(self) -> int:
        return int(self.assignment_NK.shape[1])

    def bind(self, byzantine_ids: list[int]) -> None:
        """Fix the coalition (the adversary's nodes) and the number of file votes it wins."""
        self.byzantine_ids = sorted(byzantine_ids)
        self.byzantine_wins = distorted(self.assignment_NK, self.byzantine_ids)

    def worst_case(self, q: int) -> tuple[int, list[int]]:
        return worst_case_distorted(self.assignment_NK, q)

    def summary(self, compute_s: float) -> dict[str, Any]:
        k = self.num_files
        worst, _ = self.worst_case(len(self.byzantine_ids)) if self.byzantine_ids else (0, [])
        rounds = max(self.rounds, 1)
        return {
            "scheme": self.scheme,
            "replication": self.replication,
            "files": k,
            "files_per_node": int(self.assignment_NK.sum(1).max()),
            "vote": self.mode,
            "byzantine_can_distort": self.byzantine_wins,
            "worst_case_distorted_for_q": worst,
            "distorted_fraction": round(self.distorted_total / (rounds * k), 4),
            "undecided_fraction": round(self.undecided_total / (rounds * k), 4),
            "gradient_evaluations_per_round": round(self.copies_total / rounds, 2),
            "replication_overhead": round(self.copies_total / (rounds * k), 3),
            "compute_seconds": round(compute_s, 4),
            "note": "replication_overhead: gradient evaluations per file (r); distorted_fraction: files "
            "per round whose vote a corrupted copy won (measured; simulated attack)",
        }


def build_plan(cfg: Config) -> RedundancyPlan:
    """The placement the config asks for (a ConfigError listing the supported sizes when invalid)."""
    red = cfg.security.redundancy
    try:
        a = make_assignment(
            red.scheme, workers=cfg.distributed.num_nodes, replication=red.replication, **red.params
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"security.redundancy: {err}") from None
    return RedundancyPlan(red.scheme, red.replication, np.asarray(a, dtype=bool), red.vote, red.tolerance)
