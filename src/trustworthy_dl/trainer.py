"""``DistributedTrainer``: a thin Python facade over the config and the round loop.

from trustworthy_dl import DistributedTrainer
trainer = DistributedTrainer(model_name="cnn", num_nodes=8, trust_threshold=0.7)
result = trainer.train(dataset="digits", epochs=20)
result.summary["final"]["test_accuracy"]; result.history[-1]["loss"]
trainer.trust_manager.scores; trainer.attacker.byzantine_ids   # the last run's components
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustworthy_dl.config import Config, apply_overrides, config_from_dict, read_yaml
from trustworthy_dl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from trustworthy_dl.attacks import AdversarialAttacker
    from trustworthy_dl.trust import TrustManager

__all__ = ["DistributedTrainer", "TrainResult"]

# facade keyword -> dotted config field
_INIT_FIELDS = {
    "model_name": "model.name",
    "model_size": "model.size",
    "num_nodes": "distributed.num_nodes",
    "parallelism": "distributed.parallelism",
    "num_stages": "distributed.num_stages",
    "replicas": "distributed.replicas",
    "spares": "distributed.spares",
    "micro_batches": "distributed.micro_batches",
    "schedule": "distributed.schedule",
    "backend": "distributed.backend",
    "trust_threshold": "security.trust_threshold",
    "attack_detection": "security.attack_detection",
    "gradient_verification": "security.gradient_verification",
    "aggregator": "aggregation.name",
    "attack": "attack.name",
    "num_byzantine": "attack.num_byzantine",
    "seed": "seed",
}
_TRAIN_FIELDS = {
    "dataset": "data.name",
    "data_root": "data.root",
    "partition": "data.partition",
    "epochs": "training.num_epochs",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "max_rounds": "training.max_rounds",
}


@dataclass
class TrainResult:
    """``history``: one dict per round (as in metrics.jsonl); ``summary``: as in summary.json."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None
    config: Config


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value


class DistributedTrainer:
    """Train a model across simulated (or torchrun) nodes, some possibly Byzantine.

    Args:
        config: a :class:`Config`, a dict or a YAML path to start from (default: the quickstart).
        overrides: dotted ``section.key=value`` strings applied after the keywords.
        **kwargs: shortcuts (``model_name``, ``num_nodes``, ``trust_threshold``, ``aggregator``,
            ``attack``, ``num_byzantine``, ``attack_detection``, ``seed``, ...).
    """

    def __init__(
        self,
        config: Config | dict[str, Any] | str | Path | None = None,
        *,
        overrides: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(config, Config):
            base = config.to_dict()
        elif isinstance(config, (str, Path)):
            base = read_yaml(config)
        else:
            base = copy.deepcopy(config or {})
        unknown = sorted(set(kwargs) - set(_INIT_FIELDS))
        if unknown:
            raise TypeError(
                f"unknown DistributedTrainer argument(s) {unknown}; valid: {sorted(_INIT_FIELDS)}"
            )
        for key, value in kwargs.items():
            _set(base, _INIT_FIELDS[key], value)
        apply_overrides(base, list(overrides or []))
        self._base = base
        self.config = config_from_dict(copy.deepcopy(base))  # validate now: errors surface at construction
        self.trust_manager: TrustManager | None = None
        self.attacker: AdversarialAttacker | None = None

    def train(
        self,
        dataset: Any = None,
        epochs: int | None = None,
        *,
        out_dir: str | Path | None = None,
        write: bool = True,
        overrides: list[str] | None = None,
        trust_manager: TrustManager | None = None,
        attacker: AdversarialAttacker | None = None,
        model: nn.Module | None = None,
        test_dataset: Any = None,
        **kwargs: Any,
    ) -> TrainResult:
        """Run training; keyword shortcuts: dataset, epochs, batch_size, learning_rate, max_rounds, partition.

        ``dataset``: a registered name, or the user's own data (a torch ``Dataset`` of (x, y) pairs
        or an (x, y) tuple; ``test_dataset`` likewise); ``model``: the user's own ``nn.Module``
        (see :mod:`trustworthy_dl.user_components`; simulated backend).
        ``trust_manager``: a :class:`TrustManager` whose settings (initial trust, decay, recovery,
        reinstate margin, weighting) the run uses; afterwards it holds the run's scores.
        ``attacker``: an :class:`AdversarialAttacker` (``AdversarialAttacker("alie", num_byzantine=2)``)
        whose attack settings the run uses; afterwards it is bound to the run's nodes."""
        from trustworthy_dl.user_components import user_components

        data = copy.deepcopy(self._base)
        if attacker is not None:  # the attacker's settings replace the trainer's attack section
            data["attack"] = attacker.cfg.model_dump()
        seed = int(data.get("seed", 0))
        with user_components(model, dataset, test_dataset, seed=seed) as names:
            if names and data.get("distributed", {}).get("backend", "simulated") != "simulated":
                raise ConfigError("a user model or dataset object runs in the simulated backend only")
            for key, value in names.items():
                _set(data, key, value)
            if isinstance(dataset, str):
                kwargs["dataset"] = dataset
            return self._train(data, epochs, out_dir, write, overrides, trust_manager, attacker, kwargs)

    def _train(
        self,
        data: dict[str, Any],
        epochs: int | None,
        out_dir: str | Path | None,
        write: bool,
        overrides: list[str] | None,
        trust_manager: TrustManager | None,
        attacker: AdversarialAttacker | None,
        kwargs: dict[str, Any],
    ) -> TrainResult:
        from trustworthy_dl.engine.run import run_experiment

        if epochs is not None:
            kwargs["epochs"] = epochs
        unknown = sorted(set(kwargs) - set(_TRAIN_FIELDS))
        if unknown:
            raise TypeError(f"unknown train() argument(s) {unknown}; valid: {sorted(_TRAIN_FIELDS)}")
        for key, value in kwargs.items():
            _set(data, _TRAIN_FIELDS[key], value)
        if trust_manager is not None:  # its settings drive the run's trust; the threshold stays the trainer's
            for key, value in (
                ("trust.initial_trust", trust_manager.initial_trust),
                ("trust.decay_rate", trust_manager.decay_rate),
                ("trust.recovery_rate", trust_manager.recovery_rate),
                ("trust.reinstate_margin", trust_manager.reinstate_margin),
                ("trust.weighted_aggregation", trust_manager.weighted),
            ):
                _set(data, key, value)
        apply_overrides(data, list(overrides or []))
        cfg = config_from_dict(data)
        result = run_experiment(cfg, out_dir=out_dir, write=write)
        run_trust = result.experiment.trust
        if trust_manager is not None:  # the caller's object ends holding the run's scores
            trust_manager.threshold = run_trust.threshold
            trust_manager.bind(run_trust.num_nodes)
            trust_manager.load_state_dict(run_trust.state_dict())
            run_trust = trust_manager
        adversary = result.experiment.adversary
        if attacker is not None:  # the caller's object ends bound to the run's nodes and ids
            attacker.bind(adversary.num_nodes, seed=adversary.seed)
            adversary = attacker
        self.trust_manager, self.attacker = run_trust, adversary
        return TrainResult(history=result.history, summary=result.summary, out_dir=result.out_dir, config=cfg)
