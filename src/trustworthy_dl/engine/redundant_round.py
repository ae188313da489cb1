"""One data-parallel round with redundancy (DETOX / ByzShield), simulated backend.

    every node computes the gradient of each data file it holds (r copies of every file);
    a Byzantine node's copies carry its attack (identical across the coalition, so they can win)
    the coordinator votes per file over the copies of active nodes (vote.py)
        -> the winning file gradients go through the robust aggregator (hierarchical, as in the papers)
        -> a node whose copies lost most of its decided votes gives evidence to the TrustManager
           (quarantined nodes' copies are compared, not counted, so a node can earn its way back)

Ground truth for the metrics (simulation only): a file is distorted when its winning copy differs
from the honest gradient of that file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustworthy_dl.attacks.base import DataAttack, UpdateAttack
from trustworthy_dl.attacks.context import AttackContext
from trustworthy_dl.engine.timer import PhaseTimer
from trustworthy_dl.security.redundancy.vote import agree, majority_vote

if TYPE_CHECKING:
    from trustworthy_dl.engine.loop import RoundLoop

__all__ = ["redundant_round"]


def _byzantine_copies(
    loop: RoundLoop, r: int, honest_KD: Tensor, batches: list[tuple[Tensor, Tensor]]
) -> Tensor | None:
    """(K, D): the vector every Byzantine copy of each file carries this round (None: no attack)."""
    exp = loop.exp
    adv, plan = exp.adversary, exp.redundancy
    assert plan is not None
    attack = adv.attack
    if attack is None or not adv.active(r):
        return None
    k = plan.num_files
    out = honest_KD.clone()
    if isinstance(attack, DataAttack):  # poisoned copies of each file, one per file for the coalition
        poisoned = []
        for j in range(k):
            x, y = batches[j]
            poisoned.append(
                attack.apply(x, y, generator=adv.generator(r, -1 - j), num_classes=exp.data.num_classes)
            )
        assert exp.computer is not None
        exp.computer.compute(poisoned, out)
        return out * attack.boost if attack.boost != 1.0 else out
    assert isinstance(attack, UpdateAttack)
    if attack.knowledge == "omniscient":  # one vector from every file's honest gradient
        ctx = AttackContext(honest_ND=honest_KD, round=r, num_nodes=k)
        won = max(plan.byzantine_wins, 1)
        v = attack(honest_KD, num_byzantine=won, generator=adv.generator(r, -1), context=ctx)[0]
        out[:] = v.to(out.dtype)
        return out
    for j in range(k):  # an attack on its own update: each file's copies corrupted alike
        out[j] = attack(honest_KD[j : j + 1].clone(), num_byzantine=1, generator=adv.generator(r, -1 - j))[0]
    return out


def redundant_round(loop: RoundLoop, r: int) -> dict[str, Any]:
    exp = loop.exp
    plan = exp.redundancy
    assert plan is not None and exp.computer is not None
    timer = PhaseTimer()
    n, k = plan.assignment_NK.shape
    with timer("data"):
        batches = []
        for j in range(k):
            idx = exp.sampler.batch(j, r).to(exp.data.x_train.device)
            batches.append((exp.data.x_train[idx], exp.data.y_train[idx]))
    node_P, file_P = plan.node_P, plan.file_P
    with timer("compute"):  # every copy of every file, as the nodes compute them
        copies_PD = torch.empty(len(node_P), exp.flat.num_params, dtype=exp.flat.params_D.dtype)
        losses_P = exp.computer.compute([batches[j] for j in file_P.tolist()], copies_PD)
    honest_KD = copies_PD[plan.first_copy_K]  # a copy (advanced indexing), taken before any corruption
    loss_K = losses_P[plan.first_copy_K]
    with timer("attack"):
        bad_KD = _byzantine_copies(loop, r, honest_KD, batches)
        if bad_KD is not None and plan.byzantine_ids:
            byz_P = torch.isin(node_P, torch.tensor(plan.byzantine_ids, dtype=torch.long))
            copies_PD[byz_P] = bad_KD[file_P[byz_P]]
    active = exp.trust.active_N
    voted: list[Tensor] = []
    lost_N, decided_N = torch.zeros(n), torch.zeros(n)
    distorted_now, undecided = 0, 0
    mode, tol = plan.mode, plan.tolerance
    with timer("security"):
        for j, rows in enumerate(plan.rows_of_file):
            voters = [p for p in rows if bool(active[node_P[p]])]
            v = majority_vote(copies_PD[voters], mode=mode, tolerance=tol)  # type: ignore[arg-type]
            if v.winner is None:
                undecided += 1
                continue
            win = copies_PD[voters[v.winner]]
            voted.append(win)
            if not agree(win, honest_KD[j], mode=mode, tolerance=tol):  # type: ignore[arg-type]
                distorted_now += 1
            for p in rows:
                i = int(node_P[p])
                decided_N[i] += 1
                if not agree(copies_PD[p], win, mode=mode, tolerance=tol):  # type: ignore[arg-type]
                    lost_N[i] += 1
    evidence_N = (2 * lost_N > decided_N) & (decided_N > 0)
    with timer("trust"):
        events = exp.trust.update(evidence_N.float(), observed_N=decided_N > 0)
    with timer("aggregate"):
        rows_MD = torch.stack(voted) if voted else honest_KD[:0]
        result, f_eff = loop._aggregate(rows_MD, exp.aggregator.f, None)
    plan.rounds += 1
    plan.distorted_total += distorted_now
    plan.undecided_total += undecided
    plan.copies_total += len(node_P)
    loop.samples += exp.sampler.batch_size * k
    loop.tracker.record(r, flags_N=evidence_N, quarantined_N=exp.trust.quarantined_N, stage1_flags_N=None)
    rec: dict[str, Any] = {
        "round": r,
        "epoch": r // exp.rounds_per_epoch,
        "loss": float(loss_K.mean()),
        "redundancy": {
            "files": k,
            "copies": len(node_P),
            "distorted": distorted_now,
            "undecided": undecided,
            "lost_votes": [int(x) for x in lost_N.tolist()],
        },
        "num_active": int(active.sum()),
        "num_aggregated": len(voted),
        "f_eff": f_eff,
        "trust": [round(float(s), 4) for s in exp.trust.scores],
        "quarantined": torch.nonzero(exp.trust.quarantined_N).flatten().tolist(),
        "aggregator": result.info if result is not None else None,
    }
    if events.quarantined:
        rec["quarantined_now"] = events.quarantined
    if events.reinstated:
        rec["reinstated_now"] = events.reinstated
    loop._step(r, rec, timer)
    return loop._finish_round(r, rec, timer)
