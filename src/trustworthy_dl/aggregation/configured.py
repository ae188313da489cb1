"""The run's aggregator from its config: ``f`` from the config, the run seed for seeded rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustworthy_dl.aggregation.pipeline import Aggregator, aggregator_params, build_aggregator
from trustworthy_dl.errors import ConfigError, TdlError

if TYPE_CHECKING:
    from trustworthy_dl.config import Config

__all__ = ["WEIGHTED_RULES", "build_run_aggregator"]

#: Final rules whose output honours per-node weights (trust-weighted aggregation needs one). The
#: coordinate-wise rules (median, trimmed mean, Bulyan) and Krum (one row) have no weighted form.
WEIGHTED_RULES = ("mean", "multi_krum", "geometric_median", "centered_clip", "mda", "dnc", "signguard")


def build_run_aggregator(cfg: Config) -> Aggregator:
    """The configured aggregator; ``f`` defaults to the run's Byzantine count, seeded rules get the run seed."""
    params = dict(cfg.aggregation.params)
    f = params.pop("f", cfg.num_byzantine)
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(
            f"aggregation.params.f={f!r}: the number of Byzantine nodes the rule tolerates, an integer >= 0"
        )
    if cfg.trust.weighted_aggregation:
        from trustworthy_dl.aggregation.base import AGGREGATORS

        try:
            name = AGGREGATORS.canonical(cfg.aggregation.name)
        except TdlError:
            name = cfg.aggregation.name  # unknown: build_aggregator below names the valid ones
        if name in AGGREGATORS and name not in WEIGHTED_RULES:
            raise ConfigError(
                f"trust.weighted_aggregation=true needs a rule that honours weights; "
                f"aggregation.name={cfg.aggregation.name!r} does not (weighted: {', '.join(WEIGHTED_RULES)})"
            )
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
