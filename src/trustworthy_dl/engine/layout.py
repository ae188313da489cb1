"""The layout of a run: M data-parallel replicas, each a pipeline of S stages, plus spares.

Data parallelism is (N, 1, 0); ``model`` is one pipeline (M = 1); ``hybrid`` is M >= 2 pipelines.
Unit ``m * S + s`` (stage s of replica m) starts on node ``m * S + s``; the nodes after ``M * S``
are spares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustworthy_dl.config import DistributedConfig

__all__ = ["layout_numbers"]


def layout_numbers(d: DistributedConfig, max_stages: int | None = None) -> tuple[int, int, int]:
    """(M replicas, S stages, spares) of this layout; data parallel is (N, 1, 0).

    Given ``num_stages``, ``num_nodes`` must equal M x S + spares: a mismatch raises ValueError
    showing the arithmetic. Without it, S is derived: for ``model`` every non-spare node holds a
    stage, for ``hybrid`` S = 2; capped at ``max_stages`` (the model's blocks, when known) and
    the nodes left over become spares.
    """
    n = d.num_nodes
    if d.parallelism == "data":
        if d.num_stages not in (None, 1) or d.replicas not in (None, n) or d.spares:
            raise ValueError(
                "parallelism=data takes no num_stages / replicas / spares "
                f"(got num_stages={d.num_stages}, replicas={d.replicas}, spares={d.spares})"
            )
        return n, 1, 0
    if d.spares >= n:
        raise ValueError(f"spares={d.spares} leaves no node of num_nodes={n} to hold a stage")
    given = d.num_stages is not None
    if d.num_stages is not None:
        s = d.num_stages
    elif d.parallelism == "model":
        s = n - d.spares
    else:
        s = 2
    if not given and max_stages is not None:
        s = max(1, min(s, max_stages))
    if d.parallelism == "model":
        if d.replicas not in (None, 1):
            raise ValueError(
                f"parallelism=model is one pipeline: replicas must be 1 (got {d.replicas}); use hybrid"
            )
        m = 1
    else:
        m = d.replicas if d.replicas is not None else (n - d.spares) // s
        if m < 2:
            raise ValueError(
                f"parallelism=hybrid needs replicas >= 2 (num_nodes={n}, num_stages={s}, "
                f"spares={d.spares} give replicas={m}); use parallelism=model for one pipeline"
            )
    if given or d.replicas is not None:
        if m * s + d.spares != n:
            raise ValueError(
                f"num_nodes={n} must equal replicas x num_stages + spares = {m} x {s} + {d.spares} "
                f"= {m * s + d.spares}"
            )
        return m, s, d.spares
    return m, s, n - m * s  # derived: the nodes left over are spares
