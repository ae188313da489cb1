"""Checks across sections of a config (a field alone is checked by its own schema in config.py).

Each raises ValueError naming the fields; pydantic turns it into the config error the user sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["cross_check"]


def cross_check(cfg: Config) -> None:
    """Ids in range, a valid layout, attacks that fit the parallelism, sharding and fault limits,
    and an aggregator that can be built for N nodes."""
    n = cfg.distributed.num_nodes
    a = cfg.attack
    if a.byzantine_ids is not None:
        bad = [i for i in a.byzantine_ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"attack.byzantine_ids {bad} out of range for distributed.num_nodes={n}")
        if len(set(a.byzantine_ids)) != len(a.byzantine_ids):
            raise ValueError(f"attack.byzantine_ids {a.byzantine_ids} has duplicates")
    try:
        cfg.distributed.layout_numbers()
    except ValueError as err:
        raise ValueError(f"distributed: {err}") from None
    from trustworthy_dl.attacks import PIPELINE_ATTACKS

    for extra in a.all_attacks()[1:]:
        if extra.byzantine_ids is None:
            raise ValueError(f"attack.also {extra.name}: give its nodes as byzantine_ids")
        bad = [i for i in extra.byzantine_ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"attack.also {extra.name}: byzantine_ids {bad} out of range for num_nodes={n}")
    for att in a.all_attacks():
        if cfg.distributed.parallelism == "data" and att.name in PIPELINE_ATTACKS:
            raise ValueError(
                f"attack {att.name!r} tampers with a pipeline stage: it needs "
                "distributed.parallelism=model or hybrid"
            )
    if cfg.aggregation.mode == "sharded":
        from trustworthy_dl.aggregation.sharding import check_shardable

        check_shardable(cfg.aggregation.name, [p.name for p in cfg.aggregation.pre])
        if cfg.distributed.parallelism != "data" or cfg.distributed.round_timeout_s is not None:
            raise ValueError(
                "aggregation.mode=sharded needs data parallelism and no round_timeout_s "
                "(its all-to-all waits for every process)"
            )
    for fault in cfg.faults:
        if fault.node >= n:
            raise ValueError(f"faults: node {fault.node} out of range for distributed.num_nodes={n}")
        if cfg.distributed.parallelism != "data":
            raise ValueError("faults: injected faults are modelled in data-parallel runs only (for now)")
    if cfg.num_byzantine >= n:
        raise ValueError(f"attack.num_byzantine={cfg.num_byzantine} must be < distributed.num_nodes={n}")
    import torch

    from trustworthy_dl.aggregation.configured import build_run_aggregator

    # unknown aggregator or parameter, or a tolerance condition that fails for N, fails at load time
    # (pipelines aggregate M rows per stage: f is lowered to what the rule tolerates for M)
    aggregator = build_run_aggregator(cfg)
    if cfg.distributed.parallelism == "data":
        aggregator(torch.zeros(n, 2))
    if a.end_round is not None and a.end_round < a.start_round:
        raise ValueError(f"attack.end_round={a.end_round} is before attack.start_round={a.start_round}")
