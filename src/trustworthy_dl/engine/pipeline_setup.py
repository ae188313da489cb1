"""Build a pipeline (``model``) or hybrid (``hybrid``) run: layout, stages, groups, defences.

Layout: M replicas, each a pipeline of S stages, plus spares. Unit ``u = m * S + s`` (stage s of
replica m) starts on node u; nodes ``M * S ..`` are spares. Replica m trains on data shard m
(``training.batch_size`` samples per replica per step, cut into ``distributed.micro_batches``).
The coordinator's step maps over S update groups: group s is the (M, D_s) matrix of the
replicas' stage-s gradients, inspected and robustly aggregated as data parallelism's (N, D).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trustworthy_dl.aggregation.configured import build_run_aggregator
from trustworthy_dl.attacks import DATA_ATTACKS, UPDATE_ATTACKS, AdversarialAttacker
from trustworthy_dl.config import Config
from trustworthy_dl.data import DatasetBundle
from trustworthy_dl.data.partition import partition_bundle
from trustworthy_dl.data.sampler import ShardSampler
from trustworthy_dl.engine.comm import Comm
from trustworthy_dl.engine.optim import CoordinatorOptimizer
from trustworthy_dl.engine.pipeline_exec import StageRunner
from trustworthy_dl.engine.pipeline_schedule import ScheduleStats, ticks
from trustworthy_dl.engine.setup import Experiment, build_model
from trustworthy_dl.engine.staged import StagedModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models.stages import block_times, model_blocks
from trustworthy_dl.security.layer import SecurityLayer, build_security
from trustworthy_dl.security.pipeline_verify import PipelineVerifier
from trustworthy_dl.trust import ShardScheduler, TrustManager
from trustworthy_dl.trust.snapshots import SnapshotStore

__all__ = ["PipelineParts", "build_pipeline_experiment", "check_pipeline_supported"]

#: Fewest replicas for stage-1 statistics on a stage group (rank statistics on 2-3 rows are noise).
MIN_ROWS_FOR_STATISTICS = 4


@dataclass
class PipelineParts:
    """What a pipeline run adds to an :class:`Experiment`."""

    replicas: int
    num_stages: int
    spares: int
    staged: StagedModel
    runner: StageRunner
    micro_batches: int
    schedule: str
    schedule_stats: ScheduleStats
    attackers: list[AdversarialAttacker]
    group_security: list[SecurityLayer] | None
    verifier: PipelineVerifier | None
    monitor_params: bool
    snapshots: SnapshotStore
    notes: list[str] = field(default_factory=list)
    block_weights: list[float] | None = None  # stage_balance: time: the measured cut (checkpointed)

    def unit(self, replica: int, stage: int) -> int:
        return replica * self.num_stages + stage


def check_processes(cfg: Config, *, multi_process: bool) -> None:
    """What a pipeline over several processes cannot do yet (a clear error).

    Cross-validation of stages, parameter digests, message checks and migration work across
    processes (``pipeline_checks.py``); the stage-group statistics and row re-computation of hybrid
    layouts (M >= 2 replicas) need every hop of a stage on the coordinator and do not yet.
    """
    s = cfg.security
    if not (multi_process and (s.attack_detection or s.gradient_verification)):
        return
    replicas, _, _ = cfg.distributed.layout_numbers()
    if replicas >= 2:
        raise ConfigError(
            f"a defended hybrid layout ({replicas} replicas) over several processes (torchrun) is not "
            "supported yet: its stage-group checks need every stage's messages on the coordinator. "
            "Run it simulated, or as one pipeline (replicas=1), or undefended "
            "(security.attack_detection=false, security.gradient_verification=false)"
        )


def check_pipeline_supported(cfg: Config) -> None:
    """What a pipeline run cannot do yet: a clear error at load time."""
    check_processes(cfg, multi_process=cfg.distributed.backend == "torch")
    if cfg.distributed.per_node_grads != "loop":
        raise ConfigError(
            f"distributed.per_node_grads={cfg.distributed.per_node_grads!r} applies to data parallelism; "
            "pipeline stages compute per micro-batch (leave it at loop)"
        )
    if cfg.model.norm == "batch" and cfg.distributed.micro_batches > 1:
        raise ConfigError(
            "model.norm=batch with micro_batches > 1: batch statistics differ per micro-batch, so the "
            "pipeline would not compute the model's gradient; use model.norm=group"
        )
    for att in cfg.attack.all_attacks():
        if att.name in DATA_ATTACKS:
            raise ConfigError(
                f"attack {att.name!r} is a data attack: pipelines take pipeline attacks "
                "(activation_tamper, gradient_tamper, parameter_tamper) and, in hybrid layouts, update attacks"
            )


def build_pipeline_experiment(
    cfg: Config,
    comm: Comm,
    device: torch.device,
    data: DatasetBundle,
    *,
    block_weights: list[float] | None = None,
) -> Experiment:
    dcfg, tcfg = cfg.distributed, cfg.training
    n = dcfg.num_nodes
    check_processes(cfg, multi_process=comm.world_size > 1)
    model = build_model(cfg, data, device)
    blocks = len(model_blocks(model))
    try:
        m_rep, s_num, spares = dcfg.layout_numbers(max_stages=blocks)
    except ValueError as err:
        raise ConfigError(f"distributed: {err}") from None
    if s_num > blocks:
        raise ConfigError(
            f"distributed.num_stages={s_num} exceeds the {blocks} blocks of {cfg.model.name}"
            f"{'-' + cfg.model.size if cfg.model.size else ''}: at most {blocks} stages"
        )
    update_attacks = sorted({a.name for a in cfg.attack.all_attacks() if a.name in UPDATE_ATTACKS})
    if m_rep == 1 and update_attacks:
        raise ConfigError(
            f"attack {update_attacks} attacks a replica's update, but this pipeline has one replica: "
            "there is no update to corrupt against others; use a pipeline attack (activation_tamper, "
            "gradient_tamper, parameter_tamper) or a hybrid layout (distributed.replicas > 1)"
        )
    nowhere = {"activation_tamper": (s_num - 1, "the last stage sends no activations"),
               "gradient_tamper": (0, "stage 0 sends no activation-gradients")}  # fmt: skip
    for att in cfg.attack.all_attacks():
        stage, why = nowhere.get(att.name, (-1, ""))
        idle = [i for i in att.byzantine_ids or [] if i < m_rep * s_num and i % s_num == stage]
        if idle:
            raise ConfigError(
                f"attack {att.name!r} on nodes {idle}: they hold stage {stage}, and {why}; pick nodes of "
                f"other stages (node i holds stage i % {s_num})"
            )
    notes = []
    if dcfg.num_stages is None:
        notes.append(f"num_stages derived: {s_num} (replicas {m_rep}, spares {spares})")
    if tcfg.batch_size < dcfg.micro_batches:
        raise ConfigError(
            f"training.batch_size={tcfg.batch_size} is smaller than distributed.micro_batches={dcfg.micro_batches}"
        )
    if len(data.x_train) < m_rep:
        raise ConfigError(f"{m_rep} replicas exceed the {len(data.x_train)} training samples of {data.name}")
    shards = partition_bundle(data, m_rep, cfg.data, seed=cfg.seed)
    data.x_train, data.y_train = data.x_train.to(device), data.y_train.to(device)
    data.x_test, data.y_test = data.x_test.to(device), data.y_test.to(device)

    weights = None
    if dcfg.stage_balance == "time":  # measured once, by the coordinator: every rank cuts alike
        if block_weights is None:
            sample = data.x_train[: max(1, tcfg.batch_size // dcfg.micro_batches)]
            mine = block_times(model, sample) if comm.is_coordinator else [0.0] * blocks
            block_weights = comm.broadcast(torch.tensor(mine, dtype=torch.float64)).tolist()
        elif len(block_weights) != blocks:
            raise ConfigError(
                f"the checkpoint's stage cut has {len(block_weights)} blocks, the model {blocks}"
            )
        weights = list(block_weights)
        notes.append(
            "stages balanced by measured block time: " + ", ".join(f"{w * 1e3:.2f} ms" for w in weights)
        )
    staged = StagedModel(model, s_num, block_weights=weights)
    task = Task(data.kind)
    sampler = ShardSampler(shards, tcfg.batch_size, seed=cfg.seed)
    rounds_per_epoch = sampler.rounds_per_epoch
    total = rounds_per_epoch * tcfg.num_epochs
    if tcfg.max_rounds is not None:
        total = min(total, tcfg.max_rounds)

    attackers = [AdversarialAttacker(a, num_nodes=n, seed=cfg.seed) for a in cfg.attack.all_attacks()]
    adversary = attackers[0] if attackers else AdversarialAttacker(cfg.attack, num_nodes=n, seed=cfg.seed)
    s = cfg.security
    group_security = None
    if m_rep >= 2 and (s.attack_detection or s.gradient_verification):
        stats_cfg = cfg
        if m_rep < MIN_ROWS_FOR_STATISTICS and s.attack_detection:
            # spot checks are then the groups' only signal: they get twice the budget (the share
            # that stage-1 suspects would have used)
            spot = min(1.0, 2 * s.spot_check_fraction)
            notes.append(
                f"stage-1 statistics off on the stage groups: {m_rep} replicas are too few rows "
                f"(needs {MIN_ROWS_FOR_STATISTICS}); rows are verified by re-computation "
                f"(spot checks at {spot:g} of the rows per step)"
            )
            stats_cfg = cfg.model_copy(
                update={
                    "security": s.model_copy(update={"attack_detection": False, "spot_check_fraction": spot})
                },
                deep=True,
            )
        if stats_cfg.security.attack_detection or stats_cfg.security.gradient_verification:
            group_security = []
            for _ in range(s_num):
                # no stage-1 memory: a row is a replica, whose stage may migrate to another node
                layer = build_security(stats_cfg, num_nodes=m_rep, history=False)
                assert layer is not None
                group_security.append(layer)
    verifier = (
        PipelineVerifier(
            rate=s.pipeline_verify_rate,
            rtol=s.verification_rtol,
            atol=s.verification_atol,
            seed=cfg.seed,
            watch_rounds=s.watch_rounds,
        )
        if s.gradient_verification
        else None
    )
    _, stats = ticks(dcfg.schedule, s_num, dcfg.micro_batches)
    parts = PipelineParts(
        replicas=m_rep,
        num_stages=s_num,
        spares=spares,
        staged=staged,
        runner=StageRunner(staged, task),
        micro_batches=dcfg.micro_batches,
        schedule=dcfg.schedule,
        schedule_stats=stats,
        attackers=attackers,
        group_security=group_security,
        verifier=verifier,
        monitor_params=s.attack_detection or s.gradient_verification,
        snapshots=SnapshotStore(cfg.trust.snapshot_every),
        notes=notes,
        block_weights=weights,
    )
    return Experiment(
        cfg=cfg,
        comm=comm,
        device=device,
        data=data,
        task=task,
        flat=staged,  # type: ignore[arg-type]  # .model / .params_D / .num_params, as a FlatModel
        computer=None,
        sampler=sampler,
        scheduler=ShardScheduler(n, m_rep * s_num, return_home=False),
        adversary=adversary,
        aggregator=build_run_aggregator(cfg),
        trust=TrustManager.from_config(n, cfg),
        security=None,
        optimizer=CoordinatorOptimizer(staged.params_D, tcfg, total_rounds=total),
        rounds_per_epoch=rounds_per_epoch,
        total_rounds=max(total, 1),
        pipeline=parts,
    )
