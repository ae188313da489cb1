"""Build the privacy layer of a run: checks, the noise multiplier, the mechanism and the accountant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.nn.modules.batchnorm import _BatchNorm

from trustworthy_dl.config import Config
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.privacy.accountant import ShardAccountant, noise_for_target
from trustworthy_dl.privacy.mechanism import NodePrivacy

__all__ = ["PrivacyLayer", "build_privacy", "check_privacy", "finite_epsilon"]


@dataclass
class PrivacyLayer:
    """The node-side mechanism (every process) and the accountant (read on the coordinator)."""

    mechanism: NodePrivacy
    accountant: ShardAccountant | None  # None: mode none (no noise, nothing to account)
    noise_multiplier: float

    def summary(self) -> dict[str, Any]:
        cfg = self.mechanism.cfg
        out: dict[str, Any] = {
            "mode": cfg.mode,
            "clip_norm": cfg.clip_norm if cfg.mode != "none" else None,
            "noise_multiplier": round(self.noise_multiplier, 6),
            "target_epsilon": cfg.target_epsilon,
            "delta": cfg.delta,
            "accountant": cfg.accountant if self.accountant is not None else None,
            "epsilon": finite_epsilon(self.accountant.epsilon()) if self.accountant is not None else None,
            "bytes_per_update": self.mechanism.bytes_per_update(),
            "dense_bytes_per_update": self.mechanism.flat.num_params
            * self.mechanism.flat.params_D.element_size(),
        }
        if self.accountant is not None:
            per_shard = self.accountant.per_shard()
            out["epsilon_per_shard"] = [finite_epsilon(e) for e in per_shard]
            out["sample_rates"] = [round(q, 6) for q in self.accountant.sample_rates]
            if cfg.target_epsilon is not None:
                # sigma is calibrated for one step per shard and round; a shard also computed on
                # by a node on probation (or by a second holder) takes more steps and can end
                # above the target: said here, not hidden in the per-shard list
                over = [i for i, e in enumerate(per_shard) if e > cfg.target_epsilon]
                out["target_exceeded"] = bool(over)
                out["shards_over_target"] = over
        if cfg.sparsify.kind != "none":
            out["sparsify"] = cfg.sparsify.model_dump()
        return out


def finite_epsilon(x: float) -> float | str:
    return round(x, 4) if x != float("inf") else "inf"


def check_privacy(cfg: Config) -> None:
    """What the privacy layer cannot run, as a ConfigError before anything is built."""
    p = cfg.privacy
    if not p.enabled:
        return
    if cfg.distributed.parallelism != "data":
        raise ConfigError(
            f"privacy.enabled=true with distributed.parallelism={cfg.distributed.parallelism!r}: node-side "
            "privacy is implemented for data parallelism in this release"
        )
    if p.sparsify.kind != "none" and p.sparsify.error_feedback and cfg.security.gradient_verification:
        raise ConfigError(
            "privacy.sparsify.error_feedback=true with security.gradient_verification=true: a node's "
            "error-feedback memory holds its past gradients, which a verifier cannot replay, so every honest "
            "node would fail re-computation; set privacy.sparsify.error_feedback=false or turn verification off"
        )
    if (
        p.sparsify.kind != "none"
        and p.sparsify.error_feedback
        and cfg.distributed.backend == "torch"
        and cfg.output.checkpoint_every > 0
    ):
        raise ConfigError(
            "privacy.sparsify.error_feedback=true with output.checkpoint_every > 0 under torchrun: each "
            "node's error-feedback memory lives in its own process and is not written to the coordinator's "
            "checkpoint in this release; turn one of them off (the simulated backend checkpoints it)"
        )


def build_privacy(
    cfg: Config, flat: FlatModel, task: Task, *, shard_sizes: list[int], batch_size: int, total_rounds: int
) -> PrivacyLayer | None:
    """The run's privacy layer, or None when ``privacy.enabled`` is false."""
    p = cfg.privacy
    if not p.enabled:
        return None
    if p.mode == "node_clip" and any(isinstance(m, _BatchNorm) for m in flat.model.modules()):
        raise ConfigError(
            "privacy.mode=node_clip with BatchNorm (model.norm=batch): its running mean and variance are "
            "updated from each node's raw batch, outside the clipping and the noise, and they are part of "
            "the model everyone sees; use model.norm=group"
        )
    rates = [min(1.0, batch_size / max(size, 1)) for size in shard_sizes]
    sigma = p.noise_multiplier
    # node_clip: a sample moves the clipped update by up to 2C, so its sample-level multiplier is sigma/2
    factor = 0.5 if p.mode == "node_clip" else 1.0
    if p.target_epsilon is not None:
        try:
            sigma = (
                noise_for_target(
                    p.target_epsilon,
                    delta=p.delta,
                    sample_rate=max(rates),
                    steps=total_rounds,
                    accountant=p.accountant,
                )
                / factor
            )
        except ValueError as err:
            raise ConfigError(f"privacy.target_epsilon={p.target_epsilon} cannot be reached: {err}") from None
    mechanism = NodePrivacy(p, flat, task, noise_multiplier=sigma, seed=cfg.seed)
    mechanism.unit_batch = batch_size
    accountant = ShardAccountant(rates, sigma * factor, p.accountant, p.delta) if p.mode != "none" else None
    return PrivacyLayer(
        mechanism=mechanism, accountant=accountant, noise_multiplier=sigma if p.mode != "none" else 0.0
    )
