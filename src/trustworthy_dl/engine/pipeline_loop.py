"""The round loop of a pipeline or hybrid run: one step of M pipelines of S stages.

One step::

    plans   = holders' behaviour (honest, or a Byzantine stage's tampering)
    passes  = runner.run_replica(m) for each replica      # micro-batches through the stage holders
    groups  = [(s, rows_MD[s], holders of stage s)]       # update group s: the replicas' stage-s rows
    rows    = update attacks on the groups (hybrid)       # ALIE, IPM... from Byzantine holders
    checks  = message checks + cross-validation (sampled micro-batches re-run) + parameter digests
    verdict = per group: stage-1 statistics, stage-2 re-computation of rows (hybrid)
    trust.update(node evidence = max over the node's units)
    agg_D[cols_s] = robust(rows of trusted holders of clean replicas)  for each group s
    optimizer.step(agg_D); snapshots.observe(...)
    scheduler.reassign(...)   # a distrusted holder's stages move to spares / trusted nodes,
                              # restored from the last verified snapshot (a migration event)

Legend: M replicas, S stages, N nodes, D all flat parameters, D_s stage s's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.attacks import AdversarialAttacker
from trustworthy_dl.attacks.pipeline import tamper_tensor
from trustworthy_dl.engine.loop import RoundLoop
from trustworthy_dl.engine.pipeline_checks import RemoteChecks, collect_remote_checks
from trustworthy_dl.engine.pipeline_exec import HolderPlan, ReplicaPass, StageTransport
from trustworthy_dl.engine.pipeline_setup import PipelineParts
from trustworthy_dl.engine.pipeline_summary import pipeline_summary
from trustworthy_dl.engine.setup import Experiment
from trustworthy_dl.engine.timer import PhaseTimer as _Timer
from trustworthy_dl.security.metrics import DetectionTracker
from trustworthy_dl.security.monitor import tensor_digest

__all__ = ["PipelineLoop"]


class PipelineLoop(RoundLoop):
    """:class:`RoundLoop` whose round is a pipeline step over S update groups."""

    def __init__(self, exp: Experiment, out_dir: Path | None) -> None:
        super().__init__(exp, out_dir)
        pp = exp.pipeline
        assert pp is not None
        self.pp: PipelineParts = pp
        byz = sorted({i for a in pp.attackers for i in a.byzantine_ids})
        self.tracker = DetectionTracker(
            exp.cfg.distributed.num_nodes, byz, attack_active=lambda r: any(a.active(r) for a in pp.attackers)
        )
        self.byzantine_ids = byz
        p = exp.flat.params_D
        self.rows = [
            torch.empty(pp.replicas, d, dtype=p.dtype, device=p.device) for d in pp.staged.stage_sizes()
        ]
        self.migrations: list[dict[str, Any]] = []
        self.first_evidence: dict[int, int] = {}
        self._stale: dict[tuple[int, int], Tensor] = {}  # (node, stage) -> parameters frozen by "skip"
        self._group_attackers: dict[tuple[int, int, tuple[int, ...]], AdversarialAttacker] = {}
        self.verify_checked = 0
        self.step_seconds = 0.0
        self._migrations_shared = 0  # migrations whose restored state every process has

    def _alloc_rows(self) -> bool:
        return False

    def _transport(self, replica: int, holder: list[int]) -> StageTransport | None:
        """Point-to-point messages between the ranks holding this replica's stages (None: one process)."""
        if self.comm.world_size == 1:
            return None
        S = self.pp.num_stages
        ranks = [self.comm.rank_of(holder[self.pp.unit(replica, s)]) for s in range(S)]
        return StageTransport(self.comm, ranks)

    # ------------------------------------------------------------------ the Byzantine holders

    def _plans(self, r: int) -> list[HolderPlan]:
        pp, holder = self.pp, self.exp.scheduler.holder
        cols = pp.staged.cols
        plans = [HolderPlan() for _ in holder]
        for att in pp.attackers:
            stage_attack = att.stage_attack
            if stage_attack is None or not att.active(r):
                continue
            for u, node in enumerate(holder):
                if not att.is_byzantine(node):
                    continue
                s = u % pp.num_stages
                gen = att.generator(r, node * 1000 + u)
                if stage_attack.target == "activation":
                    plans[u].activation = lambda t, g=gen, a=stage_attack: a.apply(t, g)
                elif stage_attack.target == "gradient":
                    plans[u].gradient = lambda t, g=gen, a=stage_attack: a.apply(t, g)
                else:
                    own = self.exp.flat.params_D.detach()[cols[s]]
                    if stage_attack.mode == "skip":
                        plans[u].params_D = self._stale.setdefault((node, s), own.clone())
                    else:
                        plans[u].params_D = tamper_tensor(own, stage_attack.mode, stage_attack.strength, gen)
        return plans

    def _update_attacks(self, r: int) -> None:
        """Byzantine holders' update attacks on their stage rows (hybrid layouts)."""
        pp, holder = self.pp, self.exp.scheduler.holder
        for att in pp.attackers:
            if att.stage_attack is not None or not att.active(r):
                continue
            for s in range(pp.num_stages):
                rows = tuple(m for m in range(pp.replicas) if att.is_byzantine(holder[pp.unit(m, s)]))
                if not rows or len(rows) >= pp.replicas:
                    continue
                key = (id(att), s, rows)
                if key not in self._group_attackers:
                    acfg = att.cfg.model_copy(update={"byzantine_ids": list(rows), "also": []})
                    self._group_attackers[key] = AdversarialAttacker(
                        acfg, num_nodes=pp.replicas, seed=att.seed * 7919 + s
                    )
                group_att = self._group_attackers[key]
                active_M = self._active_rows(s)
                f = self.f_budget(self.exp.trust.active_N)

                def probe(rows_MD: Tensor, a: Tensor = active_M, f: int = f) -> Tensor:
                    # M rows: the trusted ones; other counts (colluders' own rows + candidates): all
                    res, _ = self.robust(rows_MD[a] if rows_MD.shape[0] == a.numel() else rows_MD, f)
                    return torch.zeros_like(rows_MD[0]) if res is None else res.value_D

                self.rows[s].copy_(group_att.corrupt(self.rows[s], round=r, aggregator=probe))

    def _holder_weights(self, s: int, use_M: Tensor) -> Tensor | None:
        """With ``trust.weighted_aggregation``: each used row weighted by its holder's trust score."""
        if not self.exp.trust.weighted:
            return None
        holders = [self.exp.scheduler.holder[self.pp.unit(m, s)] for m in range(self.pp.replicas)]
        w = self.exp.trust.weights_N()[torch.tensor(holders)][use_M]
        return w / w.sum() if float(w.sum()) > 0 else None

    def _active_rows(self, s: int) -> Tensor:
        pp, active_N = self.pp, self.exp.trust.active_N
        return torch.tensor(
            [bool(active_N[self.exp.scheduler.holder[pp.unit(m, s)]]) for m in range(pp.replicas)]
        )

    # ------------------------------------------------------------------ one step

    def _round(self, r: int) -> dict[str, Any]:
        exp, pp = self.exp, self.pp
        S, M = pp.num_stages, pp.replicas
        holder = list(exp.scheduler.holder)
        timer = _Timer()
        t_step = time.perf_counter()
        rec: dict[str, Any] = {"round": r, "epoch": r // exp.rounds_per_epoch}
        with timer("attack"):
            plans = self._plans(r)
        passes: list[ReplicaPass] = []
        for m in range(M):
            with timer("data"):
                x, y = exp.batch(m, r, [m])
                micro = list(
                    zip(torch.tensor_split(x, pp.micro_batches), torch.tensor_split(y, pp.micro_batches))
                )
            with timer("compute"):
                passes.append(
                    pp.runner.run_replica(
                        micro,
                        [plans[pp.unit(m, s)] for s in range(S)],
                        [self.rows[s][m] for s in range(S)],
                        schedule=pp.schedule,
                        transport=self._transport(m, holder),
                    )
                )
        self.samples += exp.sampler.batch_size * M
        loss = sum(p.loss for p in passes) / M
        with timer("gather"):  # each rank holds its stages' rows (zeros elsewhere): the sum is a gather
            for s, rows_MD in enumerate(self.rows):  # over the stage's holders and the coordinator
                ranks = [0] + [self.comm.rank_of(holder[pp.unit(m, s)]) for m in range(M)]
                self.comm.reduce_sum(rows_MD, group=self.comm.subgroup(ranks))
            loss = float(self.comm.reduce_sum(torch.tensor([loss], dtype=torch.float64))[0])
        rec["loss"] = loss
        remote: RemoteChecks | None = None
        if self.comm.world_size > 1:  # rejected messages are evidence even with the defences off
            with timer("security"):  # the sampled messages come from the stages' neighbours
                remote = collect_remote_checks(self, r, passes, plans, holder)
        skipped_S = torch.zeros(S)
        ctx: dict[str, Any] = {}
        if self.coordinator:
            with timer("attack"):
                self._update_attacks(r)
            ctx = self._judge_and_aggregate(r, passes, plans, holder, rec, timer, remote)
            skipped_S[ctx["skipped"]] = 1.0
        with timer("broadcast"):
            self.comm.broadcast(self.agg_D)
            self.comm.broadcast(skipped_S)

        with timer("step"):
            rec["update_norm"] = float(self.agg_D.norm())
            if not bool(skipped_S.all()):  # a skipped stage is left alone (a zero step would move momentum)
                rec["lr"] = exp.optimizer.step(
                    self.agg_D, r, frozen_D=self.pp.staged.frozen_columns(skipped_S)
                )
            else:  # nothing trustworthy this step: drop it
                rec["lr"] = exp.optimizer.lr_at(r)
                rec["step_dropped"] = True
        if self.coordinator:
            self._after_step(r, ctx, rec, timer)
        if self.comm.world_size > 1:  # a rejection can move a stage with the defences off too
            with timer("broadcast"):
                self._share_migrations()
        self.step_seconds += time.perf_counter() - t_step
        return self._finish_round(r, rec, timer)  # exp.flat.model is the stages in sequence

    def _judge_and_aggregate(
        self,
        r: int,
        passes: list[ReplicaPass],
        plans: list[HolderPlan],
        holder: list[int],
        rec: dict[str, Any],
        timer: _Timer,
        remote: RemoteChecks | None = None,
    ) -> dict[str, Any]:
        """The coordinator's part: evidence per unit and node, trust, robust aggregation per group
        into ``agg_D``. Returns what :meth:`_after_step` needs. ``remote``: what the stage holders
        of other processes reported (torchrun), in place of reading their messages directly."""
        exp, pp = self.exp, self.pp
        S, M, n = pp.num_stages, pp.replicas, exp.trust.num_nodes
        # ---- evidence per unit: rejected messages, cross-validation, parameter digests, group verdicts
        unit_ev = torch.zeros(M * S, dtype=torch.float64)
        reasons: dict[int, str] = {}
        contaminated: set[int] = set()  # replicas whose pipeline carried a caught tamper this step
        rejected = (
            remote.rejected
            if remote is not None
            else [(m, s, k, why) for m, rp in enumerate(passes) for s, k, why in rp.rejected]
        )
        for m, s, k, why in rejected:
            u = pp.unit(m, s)
            unit_ev[u], reasons[u] = 1.0, f"message rejected (micro-batch {k}): {why}"
            contaminated.add(m)
        contaminated |= (
            remote.tainted if remote is not None else {m for m, rp in enumerate(passes) if rp.tainted}
        )
        recomputations, verify_s = 0, 0.0
        with timer("security"):
            if pp.verifier is not None:
                check = (
                    remote.check
                    if remote is not None and remote.check is not None
                    else pp.verifier.check(pp.runner, passes, holder, r)
                )
                recomputations += check.checked
                verify_s += check.seconds
                for (m, s), why in check.failed.items():
                    u = pp.unit(m, s)
                    unit_ev[u] = 1.0
                    reasons.setdefault(u, "cross-validation: " + why)
                    contaminated.add(m)
            if pp.monitor_params and remote is not None:  # each holder's reported digest
                for u in sorted(remote.tampered_units):
                    unit_ev[u] = 1.0
                    reasons.setdefault(u, "parameter digest differs from the coordinator's copy")
                    contaminated.add(u // S)
            elif pp.monitor_params:
                for u, plan in enumerate(plans):
                    # an honest holder's copy is the coordinator's own tensor; only a holder that
                    # computes with another copy can differ, so only those are hashed here
                    if plan.params_D is not None:
                        ref = exp.flat.params_D.detach()[pp.staged.cols[u % S]]
                        if not torch.equal(tensor_digest(plan.params_D), tensor_digest(ref)):
                            unit_ev[u] = 1.0
                            reasons.setdefault(u, "parameter digest differs from the coordinator's copy")
                            contaminated.add(u // S)
            group_recs, use_rows = [], []
            for s in range(S):
                use_M = self._active_rows(s)
                grec: dict[str, Any] = {"stage": s, "holders": [holder[pp.unit(m, s)] for m in range(M)]}
                if pp.group_security is not None:
                    t0 = time.perf_counter()

                    def recompute_row(m: int, s: int = s) -> Tensor:
                        return self._recompute_row(passes[m], s)

                    verdict, sec_rec = pp.group_security[s].inspect(
                        self.rows[s], round=r, active_N=use_M, recompute=recompute_row
                    )
                    verify_s += time.perf_counter() - t0
                    recomputations += int(sec_rec.get("recomputations", 0))
                    for m in range(M):
                        e = float(verdict.evidence_N[m])
                        if e > 0:
                            u = pp.unit(m, s)
                            unit_ev[u] = max(float(unit_ev[u]), e)
                            reasons.setdefault(
                                u,
                                "stage group: "
                                + ("re-computation mismatch" if verdict.confirmed_N[m] else "statistics"),
                            )
                    use_M = verdict.aggregate_mask(use_M)
                    if sec_rec.get("verified"):
                        grec["verified"] = sec_rec["verified"]
                use_M = use_M & torch.tensor([m not in contaminated for m in range(M)])
                use_rows.append(use_M)
                group_recs.append(grec)
        node_ev = torch.zeros(n, dtype=torch.float64)
        observed = torch.zeros(n, dtype=torch.bool)
        for u, node in enumerate(holder):
            node_ev[node] = max(float(node_ev[node]), float(unit_ev[u]))
            observed[node] = True
        for node in (node_ev > 0).nonzero().flatten().tolist():
            self.first_evidence.setdefault(node, r)
        with timer("trust"):
            events = exp.trust.update(node_ev, observed)
        if events.quarantined:
            rec["quarantined_now"] = events.quarantined
        if events.reinstated:
            rec["reinstated_now"] = events.reinstated

        # ---- robust aggregation per group
        with timer("aggregate"):
            active_N = exp.trust.active_N
            skipped = []
            for s in range(S):
                use_M = use_rows[s] & self._active_rows(s)
                weights = self._holder_weights(s, use_M)
                result, f_used = self.robust(self.rows[s][use_M], self.f_budget(active_N), weights)
                cols = pp.staged.cols[s]
                if result is None:
                    self.agg_D[cols].zero_()
                    skipped.append(s)
                else:
                    self.agg_D[cols].copy_(result.value_D)
                group_recs[s].update(aggregated=int(use_M.sum()), f_eff=f_used)
                if unit_ev[[pp.unit(m, s) for m in range(M)]].gt(0).any():
                    group_recs[s]["evidence"] = {
                        str(holder[pp.unit(m, s)]): reasons.get(pp.unit(m, s), "")
                        for m in range(M)
                        if unit_ev[pp.unit(m, s)] > 0
                    }
            pp.staged.sum_tied(self.agg_D)
        if skipped:
            rec["skipped_stages"] = skipped
        return {
            "skipped": skipped,
            "node_ev": node_ev,
            "active_N": active_N,
            "group_recs": group_recs,
            "recomputations": recomputations,
            "verify_s": verify_s,
        }

    def _after_step(self, r: int, ctx: dict[str, Any], rec: dict[str, Any], timer: _Timer) -> None:
        """The coordinator after the step: snapshot, migrations, detection tallies, the record."""
        exp, pp = self.exp, self.pp
        node_ev, active_N = ctx["node_ev"], ctx["active_N"]
        recomputations, verify_s = ctx["recomputations"], ctx["verify_s"]
        pp.snapshots.observe(r, bool((node_ev > 0).any()), exp.flat.params_D, exp.optimizer.opt)
        with timer("schedule"):
            moves = exp.scheduler.reassign(
                active_N, round_idx=r, move=lambda unit, a, b: self._migrate(r, unit, a, b)
            )
        if moves:
            rec["migrations"] = [e for e in self.migrations if e["round"] == r]
        self.tracker.record(
            r,
            flags_N=node_ev > 0,
            quarantined_N=exp.trust.quarantined_N,
            recomputations=recomputations,
            verify_seconds=verify_s,
        )
        self.verify_checked += recomputations
        rec["stages"] = ctx["group_recs"]
        rec["recomputations"] = recomputations
        rec["verify_s"] = round(verify_s, 6)
        rec["num_active"] = int(active_N.sum())
        rec["trust"] = [round(float(v), 4) for v in exp.trust.scores]
        rec["quarantined"] = exp.trust.quarantined_N.nonzero().flatten().tolist()
        rec["holders"] = list(exp.scheduler.holder)

    def _share_migrations(self) -> None:
        """After the coordinator's reassignment (torchrun): every process learns the stage holders,
        and after a migration the restored parameters and optimizer state (from the last verified
        snapshot) reach the process that now holds the stage (every process keeps a full copy)."""
        exp = self.exp
        holder_U = self.comm.broadcast(torch.tensor(exp.scheduler.holder, dtype=torch.int64))
        moved = self.comm.broadcast(torch.tensor([len(self.migrations)], dtype=torch.int64))
        if not self.coordinator:
            exp.scheduler.holder = holder_U.tolist()
        if int(moved[0]) == self._migrations_shared:
            return
        self._migrations_shared = int(moved[0])
        with torch.no_grad():
            self.comm.broadcast(exp.flat.params_D.data)
            for state in exp.optimizer.opt.state.values():
                for key in sorted(state):
                    if isinstance(state[key], Tensor):
                        self.comm.broadcast(state[key])

    def _recompute_row(self, rp: ReplicaPass, s: int) -> Tensor:
        """A verifier's honest stage-s gradient row of one replica: every micro-batch re-run on what
        the holder received, summed in the holder's order."""
        row = torch.zeros_like(self.rows[s][0])
        for hop in rp.hops[s]:
            row.add_(self.pp.runner.recompute(s, hop)[2])
        return row

    def _migrate(self, r: int, unit: int, from_node: int, to_node: int) -> None:
        """Move a unit to a new holder: the stage's columns restored from the last verified snapshot."""
        pp = self.pp
        t0 = time.perf_counter()
        s, m = unit % pp.num_stages, unit // pp.num_stages
        since = self.first_evidence.get(from_node, r)
        snap, old_evidence = pp.snapshots.for_evidence(since)
        cols = pp.staged.cols[s]
        moved = pp.staged.stage_sizes()[s] * self.exp.flat.params_D.element_size()
        restored_from = None
        if snap is not None:
            moved = pp.snapshots.restore(snap, cols, self.exp.flat.params_D, self.exp.optimizer.opt)
            vectors = [self.exp.flat.params_D.data, *self.exp.optimizer.state_vectors()]
            for tie in pp.staged.ties:  # a tied copy, and its optimizer state, equal to the restored one
                with torch.no_grad():
                    for v in vectors:
                        if tie.first.start >= cols.start and tie.first.stop <= cols.stop:
                            v[tie.second] = v[tie.first]
                        elif tie.second.start >= cols.start and tie.second.stop <= cols.stop:
                            v[tie.first] = v[tie.second]
            restored_from = snap.round
        units_now = sum(h == to_node for h in self.exp.scheduler.holder) + 1
        event: dict[str, Any] = {
            "round": r,
            "stage": s,
            "replica": m,
            "from": from_node,
            "to": to_node,
            "to_spare": to_node >= pp.replicas * pp.num_stages and units_now == 1,
            "bytes": int(moved),
            "restored_from_round": restored_from,
            "seconds": round(time.perf_counter() - t0, 6),
        }
        notes = [f"no spare left: node {to_node} now holds {units_now} units"] if units_now > 1 else []
        if old_evidence:
            notes.append(
                f"first evidence at step {since} predates every kept snapshot: restored from the oldest"
            )
        if notes:
            event["note"] = "; ".join(notes)
        self.migrations.append(event)

    # ------------------------------------------------------------------ checkpoint

    def extra_state(self) -> dict[str, Any]:
        pp = self.pp
        return {
            "snapshots": pp.snapshots.state_dict(),
            "verifier": pp.verifier.state_dict() if pp.verifier is not None else None,
            "groups": [g.state_dict() for g in pp.group_security] if pp.group_security is not None else None,
            "migrations": json.dumps(self.migrations),
            "first_evidence": {str(k): v for k, v in self.first_evidence.items()},
            "stale": {f"{n}:{s}": t for (n, s), t in self._stale.items()},
            "verify_checked": self.verify_checked,
            "step_seconds": self.step_seconds,
            "block_weights": pp.block_weights,  # read before the build on resume (run.py)
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pp = self.pp
        pp.snapshots.load_state_dict(state["snapshots"])
        if pp.verifier is not None and state["verifier"] is not None:
            pp.verifier.load_state_dict(state["verifier"])
        if pp.group_security is not None and state["groups"] is not None:
            for g, gs in zip(pp.group_security, state["groups"]):
                g.load_state_dict(gs)
        self.migrations = json.loads(state["migrations"])
        self.first_evidence = {int(k): int(v) for k, v in state["first_evidence"].items()}
        self._stale = {(int(k.split(":")[0]), int(k.split(":")[1])): t for k, t in state["stale"].items()}
        self.verify_checked = int(state["verify_checked"])
        self.step_seconds = float(state["step_seconds"])

    # ------------------------------------------------------------------ summary

    def _summary(self, wall: float) -> dict[str, Any]:
        return pipeline_summary(self, super()._summary(wall))

    def _extra_plots(self) -> None:
        from trustworthy_dl.report.pipeline_plots import plot_pipeline_loss
        from trustworthy_dl.report.trust_plots import plot_trust

        assert self.out_dir is not None
        plot_trust(
            self.log.records,
            self.out_dir,
            byzantine_ids=self.byzantine_ids,
            threshold=self.exp.trust.threshold,
        )
        plot_pipeline_loss(self.log.records, self.out_dir, attack_start=self.tracker.attack_start)
