"""Build every component of a run from a validated :class:`~trustworthy_dl.config.Config`.

The round loop receives an :class:`Experiment` and never looks at the config's switches again:
each seam of DESIGN.md (backend, privacy, adversary, security, trust, aggregator, optimizer,
scheduler, log) is an object here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation.configured import build_run_aggregator
from trustworthy_dl.attacks import AdversarialAttacker
from trustworthy_dl.config import Config
from trustworthy_dl.data import DatasetBundle, load_dataset
from trustworthy_dl.data.partition import partition_bundle
from trustworthy_dl.data.sampler import ShardSampler
from trustworthy_dl.engine.comm import Comm, make_comm
from trustworthy_dl.engine.faults import FaultSchedule
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.node_compute import NodeComputer
from trustworthy_dl.engine.optim import CoordinatorOptimizer
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError, DataError
from trustworthy_dl.models import get_model, model_kind
from trustworthy_dl.privacy.setup import PrivacyLayer, build_privacy, check_privacy
from trustworthy_dl.security.layer import SecurityLayer, build_security
from trustworthy_dl.security.redundancy.plan import RedundancyPlan, build_plan, check_redundancy
from trustworthy_dl.trust import ShardScheduler, TrustManager

if TYPE_CHECKING:
    from trustworthy_dl.engine.pipeline_setup import PipelineParts

__all__ = ["Experiment", "build_experiment", "check_supported", "resolve_device"]


@dataclass
class Experiment:
    """Everything one run needs, built once."""

    cfg: Config
    comm: Comm
    device: torch.device
    data: DatasetBundle
    task: Task
    flat: FlatModel
    computer: NodeComputer | None
    sampler: ShardSampler
    scheduler: ShardScheduler
    adversary: AdversarialAttacker
    aggregator: Any
    trust: TrustManager
    security: SecurityLayer | None
    optimizer: CoordinatorOptimizer
    rounds_per_epoch: int
    total_rounds: int
    pipeline: PipelineParts | None = None
    privacy: PrivacyLayer | None = None
    faults: FaultSchedule = field(default_factory=FaultSchedule)
    redundancy: RedundancyPlan | None = None

    def batch(self, node: int, round_idx: int, shards: list[int]) -> tuple[Tensor, Tensor]:
        """The clean batch node ``node`` trains on this round: ``batch_size`` samples per held shard.

        A node holding no shard (quarantined: its shards moved to trusted nodes) keeps computing
        on its home shards on probation: its row is verified but not aggregated. It draws an
        independent batch of each (``ShardSampler.independent_batch``): its row does not
        duplicate the current holder's (identical rows look like collusion to stage 1), and with
        privacy on the shard's two releases per round are the two independent subsampled steps
        the accountant charges. (It used to be the holder's next-round batch: every batch of the
        shard released twice, a correlation the accountant did not charge.)
        """
        if self.pipeline is not None:  # shard = replica: its whole batch, cut into micro-batches later
            idx = self.sampler.batch(shards[0], round_idx).to(self.data.x_train.device)
            return self.data.x_train[idx], self.data.y_train[idx]
        if not shards:  # probation
            home = self.scheduler.home_shards(node)
            idx = torch.cat([self.sampler.independent_batch(s, round_idx) for s in home])
        else:
            idx = torch.cat([self.sampler.batch(s, round_idx) for s in shards])
        idx = idx.to(self.data.x_train.device)
        return self.data.x_train[idx], self.data.y_train[idx]

    def is_eval_round(self, r: int) -> bool:
        every = self.cfg.training.eval_every
        if r == self.total_rounds - 1:
            return True
        if every is not None:
            return (r + 1) % every == 0
        return (r + 1) % self.rounds_per_epoch == 0


def resolve_device(name: str, comm_rank: int = 0) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise ConfigError("distributed.device='cuda' but no CUDA device is available")
        return torch.device("cpu")
    return torch.device("cuda", comm_rank % torch.cuda.device_count())


def check_supported(cfg: Config) -> None:
    """What this release cannot run: a ConfigError before anything is built."""
    if cfg.distributed.parallelism != "data":
        from trustworthy_dl.engine.pipeline_setup import check_pipeline_supported

        check_pipeline_supported(cfg)
    check_privacy(cfg)
    check_redundancy(cfg)
    if cfg.output.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "output.tensorboard=true needs the 'tensorboard' package (pip install tensorboard)"
            ) from None


def build_model(cfg: Config, data: DatasetBundle, device: torch.device) -> torch.nn.Module:
    """The configured model for ``data``, initialised from the run seed, in training mode."""
    torch.manual_seed(cfg.seed)  # model initialisation: identical on every backend and rank
    if model_kind(cfg.model.name) != data.kind:
        raise ConfigError(
            f"model.name={cfg.model.name!r} is a {model_kind(cfg.model.name)} model but data.name={cfg.data.name!r} "
            f"is a {data.kind} dataset"
        )
    model = get_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.input_shape[0] if data.kind == "image" else 1,
        image_size=data.input_shape[-1] if data.kind == "image" else 0,
        size=cfg.model.size,
        norm=cfg.model.norm,
        vocab_size=data.vocab_size or data.num_classes,
        block_size=cfg.data.block_size,
    ).to(device)
    model.train()
    return model


def build_experiment(
    cfg: Config, comm: Comm | None = None, *, block_weights: list[float] | None = None
) -> Experiment:
    """Load data, build the model and every seam of the round loop for ``cfg``.

    ``block_weights``: a resumed pipeline run's measured block times (``stage_balance: time``),
    so that it cuts its stages where the interrupted run did."""
    check_supported(cfg)
    dcfg, tcfg = cfg.distributed, cfg.training
    n = dcfg.num_nodes
    if comm is None:
        comm = make_comm(n, backend=dcfg.backend, dist_backend=dcfg.dist_backend)
    device = resolve_device(dcfg.device, comm.rank)

    data = load_dataset(cfg.data)
    if len(data.x_test) == 0:  # before anything is written: evaluation would fail in round 0
        raise DataError(f"{data.name}: the test set is empty; the run evaluates on it (give test data)")
    if dcfg.parallelism != "data":
        from trustworthy_dl.engine.pipeline_setup import build_pipeline_experiment

        return build_pipeline_experiment(cfg, comm, device, data, block_weights=block_weights)
    if len(data.x_train) < n:
        raise ConfigError(
            f"distributed.num_nodes={n} exceeds the {len(data.x_train)} training samples of {data.name}"
        )
    plan = build_plan(cfg) if cfg.security.redundancy.scheme != "none" else None  # K files of data
    shards = partition_bundle(data, plan.num_files if plan else n, cfg.data, seed=cfg.seed)  # CPU, before .to
    data.x_train, data.y_train = data.x_train.to(device), data.y_train.to(device)
    data.x_test, data.y_test = data.x_test.to(device), data.y_test.to(device)

    model = build_model(cfg, data, device)
    flat = FlatModel(model)
    task = Task(data.kind)
    computer = NodeComputer(flat, task, mode=dcfg.per_node_grads)

    sampler = ShardSampler(shards, tcfg.batch_size, seed=cfg.seed)
    rounds_per_epoch = sampler.rounds_per_epoch
    total = rounds_per_epoch * tcfg.num_epochs
    if tcfg.max_rounds is not None:
        total = min(total, tcfg.max_rounds)

    privacy = build_privacy(
        cfg,
        flat,
        task,
        shard_sizes=sampler.shard_sizes,
        batch_size=tcfg.batch_size,
        total_rounds=max(total, 1),
    )
    attack_cfg = cfg.attack
    if plan is not None and attack_cfg.placement == "worst_case" and cfg.num_byzantine:
        ids = plan.worst_case(cfg.num_byzantine)[1]  # the omniscient adversary's choice of nodes
        attack_cfg = attack_cfg.model_copy(update={"byzantine_ids": sorted(ids)})
    adversary = AdversarialAttacker(attack_cfg, num_nodes=n, seed=cfg.seed)
    if comm.world_size > 1 and dcfg.round_timeout_s is not None:
        from trustworthy_dl.engine.star_exchange import stall_seconds

        limit = stall_seconds(dcfg.round_timeout_s)
        slow = [f.node for f in cfg.faults if f.kind == "straggler" and float(f.delay_s or 0) >= limit]
        if slow:  # it would be declared dead, restarted, and sleep again at the same round
            raise ConfigError(
                f"faults: a straggler of nodes {slow} sleeps >= {limit:g} s, the silence after which a rank is "
                "declared failed under torchrun: that is a crash (kind: crash) or a shorter delay_s"
            )
        need = adversary.needs_view(attack_cfg.start_round)
        if need != "none":  # its all-gather waits for every colluding process, deadline or not
            raise ConfigError(
                f"attack {attack_cfg.name!r} needs the {'honest' if need == 'all' else 'colluders'} rows before "
                "it sends (an all-gather that waits for every process), which distributed.round_timeout_s "
                "cannot bound under torchrun: drop the deadline, or use an attack from each node's own row "
                "(attack.collude=false, or attack.knowledge=colluders with one Byzantine process)"
            )
    if plan is not None:
        plan.bind(adversary.byzantine_ids)
    aggregator = build_run_aggregator(cfg)
    trust = TrustManager.from_config(n, cfg)
    scheduler = ShardScheduler(n)
    security = build_security(cfg, num_nodes=n)
    optimizer = CoordinatorOptimizer(flat.params_D, tcfg, total_rounds=total)
    return Experiment(
        cfg=cfg,
        comm=comm,
        device=device,
        data=data,
        task=task,
        flat=flat,
        computer=computer,
        sampler=sampler,
        scheduler=scheduler,
        adversary=adversary,
        aggregator=aggregator,
        trust=trust,
        security=security,
        optimizer=optimizer,
        rounds_per_epoch=rounds_per_epoch,
        total_rounds=max(total, 1),
        privacy=privacy,
        faults=FaultSchedule(tuple(cfg.faults), dcfg.round_timeout_s),
        redundancy=plan,
    )


def headline(cfg: Config) -> dict[str, Any]:
    """Who ran what: the fields the summary and the final table show."""
    return {
        "model": cfg.model.name + (f"-{cfg.model.size}" if cfg.model.size else ""),
        "dataset": cfg.data.name,
        "partition": cfg.data.partition
        + (f"(alpha={cfg.data.alpha})" if cfg.data.partition == "dirichlet" else ""),
        "num_nodes": cfg.distributed.num_nodes,
        "num_byzantine": cfg.num_byzantine,
        "attack": cfg.attack.name,
        "aggregator": "+".join([p.name for p in cfg.aggregation.pre] + [cfg.aggregation.name]),
        "seed": cfg.seed,
    }
