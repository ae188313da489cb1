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
from trustworthy_dl.security.redundancy.worst_case import distorted

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
        won = distorted(plan.assignment_NK, adv.byzantine_ids)
        ctx = AttackContext(honest_ND=honest_KD, round=r, num_nodes=k)
        v = attack(honest_KD, num_byzantine=max(won, 1), generator=adv.generator(r, -1), context=ctx)[0]
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
    a = plan.assignment_NK
    n, k = a.shape
    byz = set(exp.adversary.byzantine_ids)
    with timer("data"):
        batches = []
        for j in range(k):
            idx = exp.sampler.batch(j, r).to(exp.data.x_train.device)
            batches.append((exp.data.x_train[idx], exp.data.y_train[idx]))
    pairs = [(i, j) for i in range(n) for j in range(k) if a[i, j]]
    with timer("compute"):  # every copy of every file, as the nodes compute them
        copies_PD = torch.empty(len(pairs), exp.flat.num_params, dtype=exp.flat.params_D.dtype)
        losses_P = exp.computer.compute([batches[j] for _, j in pairs], copies_PD)
    honest_KD = torch.empty(k, copies_PD.shape[1], dtype=copies_PD.dtype)
    loss_K = torch.empty(k)
    for p, (_i, j) in enumerate(pairs):
        honest_KD[j], loss_K[j] = copies_PD[p], losses_P[p]
    with timer("attack"):
        bad_KD = _byzantine_copies(loop, r, honest_KD, batches)
        if bad_KD is not None:
            for p, (i, j) in enumerate(pairs):
                if i in byz:
                    copies_PD[p] = bad_KD[j]
    active = exp.trust.active_N
    won_K = torch.zeros(k, dtype=torch.bool)
    voted: list[Tensor] = []
    lost_N, decided_N = torch.zeros(n), torch.zeros(n)
    distorted_now, undecided = 0, 0
    with timer("security"):
        for j in range(k):
            rows = [p for p, (i, jj) in enumerate(pairs) if jj == j]
            voters = [p for p in rows if bool(active[pairs[p][0]])]
            v = majority_vote(copies_PD[voters], mode=plan.mode, tolerance=plan.tolerance)  # type: ignore[arg-type]
            if v.winner is None:
                undecided += 1
                continue
            win = copies_PD[voters[v.winner]]
            won_K[j] = True
            voted.append(win)
            if not agree(win, honest_KD[j], mode=plan.mode, tolerance=plan.tolerance):  # type: ignore[arg-type]
                distorted_now += 1
            for p in rows:
                i = pairs[p][0]
                decided_N[i] += 1
                if not agree(copies_PD[p], win, mode=plan.mode, tolerance=plan.tolerance):  # type: ignore[arg-type]
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
    plan.copies_total += len(pairs)
    loop.samples += exp.sampler.batch_size * k
    loop.tracker.record(r, flags_N=evidence_N, quarantined_N=exp.trust.quarantined_N, stage1_flags_N=None)
    rec: dict[str, Any] = {
        "round": r,
        "epoch": r // exp.rounds_per_epoch,
        "loss": float(loss_K.mean()),
        "redundancy": {
            "files": k,
            "copies": len(pairs),
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
