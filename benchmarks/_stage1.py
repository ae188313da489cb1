"""Shared by the stage-1 benchmarks: honest gradient rounds, the literature's attacks, scoring.

MANDERA's setting (Zhu et al. 2022): Fashion-MNIST, a small CNN, batch 10 per node, N nodes of
which some are Byzantine, stage-1 detection only. The honest nodes' per-node gradients are
computed along an honest training trajectory (plain mean of the honest rows, SGD with momentum
as in ``configs/fmnist_defended.yaml``); every attack then replaces the Byzantine rows of the
same rounds with the library's own attack implementation (``AdversarialAttacker.corrupt``), and
every detection method is scored per node-round. Evaluating all attacks on the same honest rounds
makes the comparison paired; the trajectory is not steered by the attack (a stage-1 measurement,
not an end-to-end run).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trustworthy_dl.attacks import AdversarialAttacker
from trustworthy_dl.config import AttackConfig, load_config
from trustworthy_dl.engine.setup import build_experiment
from trustworthy_dl.security import Stage1Detector

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# name -> (attack.name, params, collude): the attack list in the literature's variants
# (mean_shift: z by ALIE's formula; mean_shift_mandera_z: by MANDERA's).
ATTACKS: dict[str, tuple[str, dict, bool]] = {
    "none": ("none", {}, True),
    "gaussian": ("gaussian", {"center": "honest_mean", "std": 30.0}, False),
    "zero_gradient": ("zero_gradient", {}, True),
    "zero_sum": ("zero_sum", {}, True),
    "mean_shift": ("mean_shift", {"shift": None}, True),
    "mean_shift_mandera_z": ("mean_shift", {"shift": None, "z_formula": "mandera"}, True),
    "sign_flip_x3_colluding": ("sign_flip", {"scale": 3.0}, True),
    "sign_flip_x3": ("sign_flip", {"scale": 3.0}, False),
}

# what each reported "method" runs: the default stage 1 and each method alone (the rank test with
# its per-node memory, ``history_decay`` 0.8; ``mandera_joint``: without the memory's own split,
# ``history_alone`` false), the same on each round alone (``*_1round``:
# ``history_decay`` 0), and the rank test with the norm (``with_norm``) or the Krum score
# (``with_krum``) as a third feature, alone and with distance
METHODS: dict[str, tuple[str, ...]] = {
    "default": ("mandera", "distance"),
    "mandera": ("mandera",),
    "distance": ("distance",),
    "mandera_joint": ("mandera",),
    "default_1round": ("mandera", "distance"),
    "mandera_1round": ("mandera",),
    "mandera_paper": ("mandera_paper",),
    "mandera_norm": ("mandera",),
    "default_norm": ("mandera", "distance"),
    "mandera_krum": ("mandera",),
    "default_krum": ("mandera", "distance"),
}
METHOD_PARAMS: dict[str, dict] = {
    "mandera_joint": {"mandera": {"history_alone": False}},
    "default_1round": {"mandera": {"history_decay": 0.0}},
    "mandera_1round": {"mandera": {"history_decay": 0.0}},
    "mandera_norm": {"mandera": {"with_norm": True}},
    "default_norm": {"mandera": {"with_norm": True}},
    "mandera_krum": {"mandera": {"with_krum": True}},
    "default_krum": {"mandera": {"with_krum": True}},
}


def honest_rounds(
    n: int, *, partition: str = "iid", rounds: int = 25, batch_size: int = 10, seed: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (round, honest (N, D) per-node gradients) along an honest mean-aggregated trajectory."""
    cfg = load_config(
        REPO / "configs" / "fmnist_defended.yaml",
        [
            f"seed={seed}",
            f"distributed.num_nodes={n}",
            f"data.partition={partition}",
            f"training.batch_size={batch_size}",
            f"training.max_rounds={rounds}",
            "attack.name=none",
            "aggregation.name=mean",
            "aggregation.params={}",
            "security.attack_detection=false",
            "security.gradient_verification=false",
        ],
    )
    exp = build_experiment(cfg)
    assert exp.computer is not None
    out_ND = torch.empty(n, exp.flat.num_params)
    for r in range(rounds):
        batches = [exp.batch(i, r, exp.scheduler.home_shards(i)) for i in range(n)]
        exp.computer.compute(batches, out_ND)
        yield r, out_ND.clone()
        exp.optimizer.step(out_ND.mean(0), r)


@dataclass
class Counts:
    """Per node-round confusion counts of one (method, attack) cell."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    per_round_fp: list[int] = field(default_factory=list)

    def add(self, flags_N: torch.Tensor, byz_N: torch.Tensor) -> None:
        self.tp += int((flags_N & byz_N).sum())
        self.fp += int((flags_N & ~byz_N).sum())
        self.fn += int((~flags_N & byz_N).sum())
        self.tn += int((~flags_N & ~byz_N).sum())

    def rates(self) -> dict[str, float | None]:
        p, neg = self.tp + self.fn, self.fp + self.tn
        f1_den = 2 * self.tp + self.fp + self.fn
        return {
            "f1": round(2 * self.tp / f1_den, 4) if p and f1_den else None,
            "tpr": round(self.tp / p, 4) if p else None,
            "fpr": round(self.fp / neg, 4) if neg else None,
        }


def attacked(name: str, honest_ND: torch.Tensor, *, num_byzantine: int, round: int, seed: int):
    """The round's matrix with the Byzantine rows replaced by attack ``name``, and the Byzantine mask."""
    n = honest_ND.shape[0]
    byz_N = torch.zeros(n, dtype=torch.bool)
    atk, params, collude = ATTACKS[name]
    if atk == "none":
        return honest_ND, byz_N
    cfg = AttackConfig(name=atk, num_byzantine=num_byzantine, params=params, collude=collude)
    adv = AdversarialAttacker(cfg, num_nodes=n, seed=seed)
    byz_N[adv.byzantine_ids] = True
    return adv.corrupt(honest_ND, round=round), byz_N


def score_grid(
    n: int,
    num_byzantine: int,
    *,
    partition: str = "iid",
    rounds: int = 25,
    attacks: tuple[str, ...] = tuple(ATTACKS),
    methods: dict[str, tuple[str, ...]] = METHODS,
    seed: int = 0,
    num_coords: int | None = 100_000,
) -> dict[tuple[str, str], Counts]:
    """Confusion counts for every (method, attack) over ``rounds`` honest rounds."""
    honest = [h for _, h in honest_rounds(n, partition=partition, rounds=rounds, seed=seed)]
    return score_rounds(
        honest, num_byzantine, attacks=attacks, methods=methods, seed=seed, num_coords=num_coords
    )


def score_rounds(
    rounds: list[torch.Tensor],
    num_byzantine: int,
    *,
    attacks: tuple[str, ...],
    methods: dict[str, tuple[str, ...]],
    seed: int = 0,
    num_coords: int | None = 100_000,
) -> dict[tuple[str, str], Counts]:
    """Like :func:`score_grid`, over honest rounds collected once (reused for every Byzantine count)."""
    # one detector per (method, attack): the rank test remembers each node's past rounds, which
    # must be the rounds of the same attack
    detectors = {
        (m, a): Stage1Detector(methods=ms, num_coords=num_coords, params=METHOD_PARAMS.get(m))
        for m, ms in methods.items()
        for a in attacks
    }
    cells = {(m, a): Counts() for m in methods for a in attacks}
    for r, honest_ND in enumerate(rounds):
        for a in attacks:
            x_ND, byz_N = attacked(a, honest_ND, num_byzantine=num_byzantine, round=r, seed=seed)
            for m in methods:
                g = torch.Generator().manual_seed(seed * 1_000_003 + r)
                cells[m, a].add(detectors[m, a].inspect(x_ND, generator=g).flags_N, byz_N)
    return cells
