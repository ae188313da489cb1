"""Typed schema of the YAML config: the single source of defaults.

Every section is a pydantic model that forbids unknown keys. :func:`load_config` reads a YAML
file, applies dotted ``--set`` overrides and returns a validated :class:`Config`; any problem is a
:class:`~trustworthy_dl.errors.ConfigError` whose message names the field path, the bad value and
the valid choices.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trustworthy_dl.config_base import _Section
from trustworthy_dl.config_errors import format_validation_error
from trustworthy_dl.config_privacy import PrivacyConfig
from trustworthy_dl.config_redundancy import Placement, RedundancyConfig
from trustworthy_dl.config_yaml import load_yaml_text, read_yaml
from trustworthy_dl.errors import ConfigError, TdlError

__all__ = [
    "AggregationConfig",
    "AttackConfig",
    "Config",
    "DataConfig",
    "DistributedConfig",
    "FaultConfig",
    "ModelConfig",
    "OutputConfig",
    "PrivacyConfig",
    "SecurityConfig",
    "TrainingConfig",
    "TrustConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


class ModelConfig(_Section):
    name: str = Field("cnn", description="Model registry name (see `tdl list models`).")
    size: str | None = Field(None, description="Size preset, e.g. gpt2: tiny | small | medium | large.")
    norm: Literal["group", "batch", "none"] = Field(
        "group", description="Normalisation layers; GroupNorm keeps per-node gradients independent."
    )

    @model_validator(mode="after")
    def _known(self) -> ModelConfig:
        from trustworthy_dl.models import MODELS, model_sizes

        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; valid: {', '.join(MODELS.names())}")
        sizes = model_sizes(self.name)
        if self.size is not None and self.size not in sizes:
            raise ValueError(
                f"model.size {self.size!r} is not a size of {self.name}; valid: {', '.join(sizes)}"
            )
        return self


class DataConfig(_Section):
    name: str = Field(
        "",
        description="Dataset registry name (see `tdl list datasets`); unset: digits for an image model, "
        "the built-in text corpus for a text model.",
    )
    root: str | None = Field(
        None,
        description="Directory holding the dataset files. None: $TDL_DATA_ROOT, ./data, ../shared/data, in that order.",
    )
    partition: Literal["iid", "dirichlet", "shards"] = Field(
        "iid", description="How samples are split over nodes."
    )
    alpha: float = Field(
        0.5, gt=0, description="Dirichlet concentration (label skew grows as alpha shrinks)."
    )
    shards_per_node: int = Field(2, ge=1, description="Label-sorted shards per node for partition=shards.")
    block_size: int = Field(64, ge=2, le=1 << 16, description="Tokens per sequence for text datasets.")
    tokenizer: Literal["byte", "gpt2"] = Field(
        "byte", description="Text tokenizer; gpt2 needs local BPE files."
    )
    tokenizer_path: str | None = Field(None, description="Directory with GPT-2 vocab.json + merges.txt.")
    max_train_samples: int | None = Field(None, ge=1, description="Keep only the first N training samples.")
    max_test_samples: int | None = Field(None, ge=1, description="Keep only the first N test samples.")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from trustworthy_dl.data import DATASETS
        from trustworthy_dl.data.registry import WEB_CORPORA

        if v == "":  # unset: chosen from the model's kind (Config)
            return v
        if v.lower() in WEB_CORPORA:
            raise ValueError(
                f"{v!r} is not available offline (nothing is downloaded at run time): put a local copy's text as "
                f".txt files in a directory DIR and use data.name=text with data.root=DIR (trainer.train(dataset="
                f"'text', data_root=DIR)); available: {', '.join(DATASETS.names())}"
            )
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(DATASETS.names())}")
        return DATASETS.canonical(v)


class TrainingConfig(_Section):
    batch_size: int = Field(32, ge=1, le=1 << 20, description="Samples per node per round.")
    learning_rate: float = Field(0.05, gt=0, le=1000)
    num_epochs: int = Field(10, ge=1, description="Passes over the training data.")
    max_rounds: int | None = Field(None, ge=1, description="Stop after this many rounds (caps num_epochs).")
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (coordinator side).")
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = Field(None, gt=0, description="Clip the aggregated update to this L2 norm.")
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Evaluate on the test set every k rounds (None: once per epoch and at the end).",
    )


class DistributedConfig(_Section):
    num_nodes: int = Field(8, ge=1, le=100_000, description="Worker nodes N (at most 100,000).")
    parallelism: Literal["data", "model", "hybrid"] = "data"
    backend: Literal["simulated", "torch"] = Field(
        "simulated",
        description="simulated: all nodes in one process; torch: one process group under torchrun.",
    )
    num_stages: int | None = Field(
        None,
        ge=1,
        description="Pipeline stages S for model / hybrid parallelism (None: 4 for model, 2 for hybrid).",
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="Data-parallel pipelines M for hybrid parallelism (model: 1; None: derived from num_nodes).",
    )
    spares: int = Field(
        0, ge=0, description="Pipeline nodes that hold no stage until a distrusted stage needs a new home."
    )
    micro_batches: int = Field(
        4, ge=1, description="Micro-batches per replica per step in pipeline schedules."
    )
    stage_balance: Literal["params", "time"] = Field(
        "params", description="Cut stages balanced by parameter count, or by each block's measured time."
    )
    schedule: Literal["gpipe", "1f1b"] = Field(
        "1f1b", description="Pipeline schedule: gpipe (all forwards, then all backwards) or 1f1b."
    )
    per_node_grads: Literal["loop", "vmap", "compile_vmap"] = Field(
        "loop", description="How the simulated backend computes per-node gradients (loop is fastest on CPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    round_timeout_s: float | None = Field(
        None,
        gt=0,
        description="torchrun: seconds the coordinator waits for a rank's rows; a later row is missing "
        "for the round (None: wait, a dead rank still ends the wait).",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="tdl launch: torchrun restarts after a rank dies; the run resumes from its checkpoint.",
    )

    def layout_numbers(self, max_stages: int | None = None) -> tuple[int, int, int]:
        """(M replicas, S stages, spares) of this layout (see :func:`trustworthy_dl.engine.layout.layout_numbers`)."""
        from trustworthy_dl.engine.layout import layout_numbers

        return layout_numbers(self, max_stages)


class AttackConfig(_Section):
    name: str = Field("none", description="Attack registry name; 'none' means no attack.")
    num_byzantine: int = Field(
        0, ge=0, description="Byzantine node count f (ignored if byzantine_ids is set)."
    )
    byzantine_ids: list[int] | None = Field(None, description="Explicit Byzantine node ids.")
    start_round: int = Field(0, ge=0)
    end_round: int | None = Field(
        None, ge=0, description="Last attacking round (inclusive); None: to the end."
    )
    every: int = Field(1, ge=1, description="Attack every k-th round from start_round (intermittent).")
    placement: Placement = Field("random", description="worst_case: the ids redundancy fears most.")
    collude: bool = Field(True, description="Byzantine nodes send one shared vector.")
    knowledge: Literal["full", "colluders"] = Field(
        "full",
        description="What omniscient attacks see: every node's honest update (full: an eavesdropper "
        "on the network) or only the colluding Byzantine nodes' own (colluders: ALIE's setting).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Attack hyperparameters.")
    also: list[AttackConfig] = Field(
        default_factory=list,
        description="More attacks in the same run, each with its own nodes and schedule "
        "(e.g. one stage tampering with activations while another node runs ALIE).",
    )

    @model_validator(mode="after")
    def _known(self) -> AttackConfig:
        from trustworthy_dl.attacks import DATA_ATTACKS, PIPELINE_ATTACKS, UPDATE_ATTACKS, attack_names
        from trustworthy_dl.attacks.base import build_attack

        name = self.name.lower()
        if name == "none":
            if self.also:
                raise ValueError("attack.also needs a main attack: set attack.name")
            return self
        registry = (
            UPDATE_ATTACKS
            if name in UPDATE_ATTACKS
            else DATA_ATTACKS
            if name in DATA_ATTACKS
            else PIPELINE_ATTACKS
            if name in PIPELINE_ATTACKS
            else None
        )
        if registry is None:
            raise ValueError(f"attack.name: unknown attack {self.name!r}; valid: {', '.join(attack_names())}")
        build_attack(registry, name, dict(self.params))  # bad params fail here, at load time
        canonical = registry.canonical(name)
        if canonical != self.name:
            object.__setattr__(self, "name", canonical)
        return self

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def all_attacks(self) -> list[AttackConfig]:
        """This attack and those of ``also`` (flattened), the enabled ones."""
        out = [self] if self.enabled else []
        for extra in self.also:
            out += extra.all_attacks()
        return out


class PreAggregatorConfig(BaseModel):
    """One pre-aggregation stage: ``{name: bucketing, s: 2}`` (extra keys are its parameters)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AggregationConfig(_Section):
    name: str = Field("mean", description="Aggregator registry name.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Aggregator hyperparameters (f, tau, ...)."
    )
    pre: list[PreAggregatorConfig] = Field(
        default_factory=list, description="Pre-aggregators applied in order."
    )
    mode: Literal["gather", "sharded"] = Field(
        "gather",
        description="gather: rows to the coordinator; sharded: each process robustly aggregates a "
        "slice of the coordinates (no single aggregation point; torchrun).",
    )


class SecurityConfig(_Section):
    trust_threshold: float = Field(0.7, ge=0, le=1, description="Trust below which a node is quarantined.")
    attack_detection: bool = Field(False, description="Stage 1: statistical detection every round.")
    gradient_verification: bool = Field(
        False, description="Stage 2: re-compute suspects' work on trusted nodes."
    )
    detection_methods: list[str] = Field(
        default_factory=lambda: ["mandera", "distance"],
        description="Stage-1 methods: mandera (calibrated rank test), distance, mandera_paper (the "
        "authors' algorithm: always flags a cluster).",
    )
    detection_combine: Literal["any", "all", "vote"] = Field(
        "any", description="How stage-1 methods' flags combine."
    )
    detection_coords: int | None = Field(
        100_000, ge=1, description="Coordinates sampled per round for stage 1 (None: all)."
    )
    detection_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-method parameters, e.g. {distance: {thresholds: {norm: 5.0}}}."
    )
    spot_check_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Budget of extra stage-2 checks: expected fraction of unflagged active nodes "
        "re-computed each round, the most suspicious first, the rest at random.",
    )
    verification_rtol: float = Field(1e-3, ge=0, description="Relative L2 tolerance of a re-computation.")
    verification_atol: float = Field(1e-8, ge=0, description="Absolute L2 tolerance (near-zero updates).")
    watch_rounds: int = Field(5, ge=0, description="Clean re-checks a failed node must pass to be unwatched.")
    verify_quarantined: bool = Field(
        True, description="Re-compute quarantined nodes on probation (see probation_max_interval)."
    )
    probation_max_interval: int = Field(
        16,
        ge=1,
        le=10_000,
        description="Longest wait in rounds between probation checks of a quarantined node: the "
        "wait doubles after each failed check and is 1 again after a passed one (1: every round).",
    )
    warmup_rounds: int = Field(
        3,
        ge=0,
        description="Rounds at the start in which every node is re-computed (statistics are weak at init).",
    )
    pipeline_verify_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Pipelines: fraction of each stage's micro-batches re-run by a verifier per step "
        "(outputs and activation-gradients compared).",
    )
    redundancy: RedundancyConfig = Field(default_factory=RedundancyConfig)  # DETOX / ByzShield voting


class TrustConfig(_Section):
    initial_trust: float = Field(0.9, ge=0, le=1)
    decay_rate: float = Field(0.1, ge=0, le=1)
    recovery_rate: float = Field(0.05, ge=0, le=1)
    reinstate_margin: float = Field(0.05, ge=0, le=1)
    weighted_aggregation: bool = Field(
        False, description="Weight each trusted node's update by its trust score (rules that take weights)."
    )
    snapshot_every: int = Field(
        10, ge=1, description="Pipelines: keep a verified snapshot of every stage each k steps."
    )


class FaultConfig(_Section):
    """One injected fault: ``{kind: crash | silent | straggler, node: 3, round: 40, delay_s: 2.0}``."""

    kind: Literal["crash", "silent", "straggler"]
    node: int = Field(ge=0)
    round: int = Field(ge=0, description="The round the fault starts in.")
    rounds: int | None = Field(
        None, ge=1, description="Rounds the node stays out (crash: None = the rest of the run; silent: 1)."
    )
    delay_s: float | None = Field(None, gt=0, description="straggler: seconds its row arrives late.")

    @model_validator(mode="after")
    def _kind_fields(self) -> FaultConfig:
        if (self.kind == "straggler") != (self.delay_s is not None):
            raise ValueError(
                f"fault {self.kind} on node {self.node}: delay_s is for (and needed by) stragglers"
            )
        if self.kind == "straggler" and self.rounds not in (None, 1):
            raise ValueError(f"fault straggler on node {self.node}: a straggler is late for one round")
        return self


class OutputConfig(_Section):
    dir: str | None = Field(None, description="Run directory; None: runs/<model>-<dataset>-<timestamp>.")
    overwrite: bool = Field(False, description="Allow writing into a directory that already holds a run.")
    tensorboard: bool = Field(False, description="Also write scalars to <dir>/tensorboard/ (SummaryWriter).")
    plots: bool = True
    progress: bool = True
    checkpoint_every: int = Field(
        0, ge=0, description="Write checkpoint.pt every k rounds for `tdl run --resume DIR` (0: never)."
    )


class Config(_Section):
    seed: int = Field(0, ge=0, le=2**63 - 1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    faults: list[FaultConfig] = Field(
        default_factory=list, description="Injected crashes, silences, stragglers."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        from trustworthy_dl.config_checks import cross_check
        from trustworthy_dl.models import MODELS, model_kind

        if self.data.name == "" and self.model.name in MODELS:  # the default dataset fits the model
            default = "text" if model_kind(self.model.name) == "text" else "digits"
            object.__setattr__(self.data, "name", default)

        cross_check(self)
        return self

    @property
    def num_byzantine(self) -> int:
        """Byzantine nodes this run simulates (0 when no attack)."""
        if not self.attack.enabled:
            return 0
        ids = self.attack.byzantine_ids
        count = len(ids) if ids is not None else self.attack.num_byzantine
        return count + sum(len(x.byzantine_ids or []) for x in self.attack.all_attacks()[1:])

    def resolved_output_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{self.model.name}-{self.data.name}-{stamp}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading & errors


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Validate a plain dict (as read from YAML) into a :class:`Config`."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, Config)) from None
    except TdlError as err:  # raised by a registry inside a validator
        raise ConfigError(str(err)) from None


def _parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``0.1``, ``[1, 2]``, ``true``); text that is not YAML stays text.
    Aliases, deep nesting and duplicate keys are errors, as in files."""
    try:
        return load_yaml_text(text, what=f"--set value {text[:40]!r}")
    except ConfigError as err:
        if "is not valid YAML" in str(err):
            return text
        raise


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a config dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = _parse_value(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    return config_from_dict(data)
