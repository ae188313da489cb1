"""Checks across sections of a config (a field alone is checked by its own schema in config.py).

Each raises ValueError naming the fields; pydantic turns it into the config error the user sees.
"""

from __future__ import annotations

import functools
import math
import os
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
    # (pipelines aggregate M rows per stage: f is lowered to what the rule tolerates for M). The
    # rules declare what f they tolerate (max_f); only a chain that cannot is run, on an (N, 1)
    # input (N is bounded by the schema), for its own words on the condition.
    aggregator = build_run_aggregator(cfg)
    if cfg.distributed.parallelism == "data" and aggregator.f > aggregator.max_f(n):
        aggregator(torch.zeros(n, 1))
        raise ValueError(f"aggregation: {aggregator.name} cannot tolerate f={aggregator.f} with n={n}")
    _check_model_and_data(cfg)
    if cfg.security.attack_detection:
        _check_detection(cfg)
    t = cfg.trust
    if t.initial_trust < cfg.security.trust_threshold:
        raise ValueError(
            f"trust.initial_trust={t.initial_trust} is below security.trust_threshold="
            f"{cfg.security.trust_threshold}: every node would start quarantined"
        )
    if cfg.security.trust_threshold + t.reinstate_margin > 1:
        raise ValueError(
            f"security.trust_threshold + trust.reinstate_margin = {cfg.security.trust_threshold} + "
            f"{t.reinstate_margin} > 1: a quarantined node could never be reinstated"
        )
    if a.end_round is not None and a.end_round < a.start_round:
        raise ValueError(f"attack.end_round={a.end_round} is before attack.start_round={a.start_round}")


def _check_model_and_data(cfg: Config) -> None:
    """The model fits the dataset's kind, and the simulated run fits in this machine's memory."""
    from trustworthy_dl.data.registry import DATASET_INFO
    from trustworthy_dl.models import model_kind

    info = DATASET_INFO.get(cfg.data.name)
    if info is None:
        return
    kind = model_kind(cfg.model.name)
    if kind != info.kind:
        raise ValueError(
            f"model.name={cfg.model.name!r} is {_a(kind)} model but data.name={cfg.data.name!r} is "
            f"{_a(info.kind)} dataset"
        )
    if cfg.distributed.backend != "simulated" or "RANK" in os.environ:
        return  # one process per rank: each holds only its own nodes
    d = _num_params(
        cfg.model.name, cfg.model.size, cfg.model.norm, cfg.data.name, cfg.data.tokenizer, cfg.data.block_size
    )
    n = cfg.distributed.num_nodes
    sample = 8 * cfg.data.block_size * 2 if info.kind == "text" else 4 * math.prod(info.shape)
    rows = 2 * n * d * 4  # the (N, D) update rows and their aggregate's working copies
    batches = n * cfg.training.batch_size * sample
    need, have = rows + batches, _physical_memory()
    if have and need > have:
        raise ValueError(
            f"this simulated run needs about {need / 2**30:.1f} GiB (N x D update rows: N={n}, D={d:,}: "
            f"{rows / 2**30:.1f} GiB; batches: {batches / 2**30:.1f} GiB) but this machine has "
            f"{have / 2**30:.1f} GiB: use fewer nodes, a smaller batch or model, or run under torchrun"
        )


@functools.lru_cache(maxsize=64)
def _num_params(model: str, size: str | None, norm: str, data: str, tokenizer: str, block: int) -> int:
    """The model's parameter count, built on the meta device (no memory, no data)."""
    import torch

    from trustworthy_dl.data.registry import DATASET_INFO
    from trustworthy_dl.models import get_model

    info = DATASET_INFO[data]
    vocab = (256 if tokenizer == "byte" else info.classes) if info.kind == "text" else info.classes
    with torch.device("meta"):
        m = get_model(
            model,
            num_classes=info.classes if info.kind == "image" else vocab,
            in_channels=info.shape[0] if info.kind == "image" else 1,
            image_size=info.shape[-1] if info.kind == "image" else 0,
            size=size,
            norm=norm,
            vocab_size=vocab,
            block_size=block,
        )
    return sum(p.numel() for p in m.parameters())


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _check_detection(cfg: Config) -> None:
    """Unknown detection methods or parameters fail at load time: the detector is built and run
    once on a small random matrix (N rows), so its own checks speak (a bad threshold, a mistyped
    parameter name) before any file is written."""
    import inspect

    import torch

    from trustworthy_dl.security.base import DETECTION_METHODS
    from trustworthy_dl.security.detector import Stage1Detector

    s = cfg.security
    for method, params in s.detection_params.items():
        if method not in DETECTION_METHODS:
            continue  # named by the detector's own error below
        defaults = inspect.signature(DETECTION_METHODS.get(method)).parameters
        for key, value in params.items():
            d = defaults[key].default if key in defaults else None
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (isinstance(d, bool) and not isinstance(value, bool)) or (
                isinstance(d, (int, float)) and not isinstance(d, bool) and not numeric
            ):
                raise ValueError(
                    f"security.detection_params.{method}.{key}={value!r}: expected a {type(d).__name__} "
                    f"(default {d!r})"
                )
    try:
        det = Stage1Detector(
            methods=tuple(s.detection_methods),
            combine=s.detection_combine,
            num_coords=s.detection_coords,
            params=s.detection_params,
        )
        x = torch.randn(max(cfg.distributed.num_nodes, 3), 8, generator=torch.Generator().manual_seed(0))
        det.inspect(x)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"security.detection_methods / detection_params: {err}") from None
