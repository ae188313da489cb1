"""The run's aggregator from its config: ``f`` from the config, the run seed for seeded rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustworthy_dl.aggregation.pipeline import Aggregator, aggregator_params, build_aggregator
from trustworthy_dl.errors import ConfigError, TdlError

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["build_run_aggregator"]


def build_run_aggregator(cfg: Config) -> Aggregator:
    """The configured aggregator; ``f`` defaults to the run's Byzantine count, seeded rules get the run seed."""
    params = dict(cfg.aggregation.params)
    f = int(params.pop("f", cfg.num_byzantine))
    try:
        if "seed" in aggregator_params(cfg.aggregation.name):
            params.setdefault("seed", cfg.seed)
        pre = []
        for p in cfg.aggregation.pre:
            stage = {"name": p.name, **p.params}
            if "seed" in aggregator_params(p.name, pre=True):
                stage.setdefault("seed", cfg.seed)
            pre.append(stage)
        return build_aggregator(cfg.aggregation.name, f=f, params=params, pre=pre)
    except TdlError as err:
        raise ConfigError(f"aggregation: {err}") from None
