"""The round loop of DESIGN.md, identical for the simulated and the torch.distributed backends.

One round::

    assignment = scheduler.assignment()              # node -> data shards
    rows       = computer.compute(local batches)     # each local node's gradient, one row each
    rows       = adversary.corrupt_local(rows, view) # a Byzantine node corrupts its own row, in its
                                                     # process (view: what the colluders exchanged)
    got        = comm.exchange(rows, meta, timeout)  # rows + presence mask on the coordinator
    trust.set_presence(got.present_N)                # a missing row: absent this round (not Byzantine)
    verdict    = security.inspect(updates_ND)        # stage 1 statistics, stage 2 re-computation
    trust.update(verdict.evidence_N)                 # scores decay on evidence, recover when clean
    agg        = aggregator(updates_ND[active])      # robust aggregation over trusted, present nodes
    comm.send_down(agg, holders, trust view)         # every rank applies the same update
    optimizer.step(agg)
    scheduler.reassign(trust.quarantined)            # shards of distrusted nodes move
    log.write(record)                                # one JSON record per round

Only the coordinator (rank 0) runs the middle of the round and writes files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustworthy_dl.aggregation import AggResult
from trustworthy_dl.attacks.coalition import coalition_view
from trustworthy_dl.engine.checkpoint import CHECKPOINT, restore, save_checkpoint
from trustworthy_dl.engine.evaluation import eval_record
from trustworthy_dl.engine.fault_log import FaultLog
from trustworthy_dl.engine.faults import LauncherStop, restart_attempt, stop_on_sigterm
from trustworthy_dl.engine.private_round import account_round, honest_update, node_rows
from trustworthy_dl.engine.probe import RoundAggregation
from trustworthy_dl.engine.redundant_round import redundant_round
from trustworthy_dl.engine.round_record import CoordinatorRecord
from trustworthy_dl.engine.run_summary import extra_plots, run_summary, traffic_summary
from trustworthy_dl.engine.setup import Experiment
from trustworthy_dl.engine.sharded_round import sharded_round
from trustworthy_dl.engine.star_exchange import RankFailure
from trustworthy_dl.engine.timer import PhaseTimer as _Timer
from trustworthy_dl.report.console import RunProgress
from trustworthy_dl.report.metrics import MetricsLog
from trustworthy_dl.report.plots import plot_training
from trustworthy_dl.report.rundir import write_json_atomic
from trustworthy_dl.report.weights import WEIGHTS_FILE, save_final_weights
from trustworthy_dl.security.metrics import DetectionTracker
from trustworthy_dl.security.monitor import ParameterMonitor

__all__ = ["RoundLoop", "RunResult"]


@dataclass
class RunResult:
    """What a run returns: its per-round history, its summary and where they were written."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None
    experiment: Experiment


def _no_op() -> None:
    return None


class RoundLoop:
    """Runs ``exp.total_rounds`` rounds and writes metrics.jsonl, summary.json and plots."""

    def __init__(self, exp: Experiment, out_dir: Path | None) -> None:
        self.start_round = 0
        self.exp = exp
        self.comm = exp.comm
        self.coordinator = exp.comm.is_coordinator
        self.out_dir = out_dir if self.coordinator else None
        self.log = MetricsLog.in_dir(self.out_dir, tensorboard=exp.cfg.output.tensorboard)
        d = exp.flat.num_params
        p = exp.flat.params_D
        rows = len(exp.comm.local_nodes) if self._alloc_rows() else 0
        self.local_RD = torch.empty(rows, d, dtype=p.dtype, device=p.device)
        self.agg_D = torch.empty(d, dtype=p.dtype, device=p.device)
        n = exp.cfg.distributed.num_nodes
        self.tracker = DetectionTracker(n, exp.adversary.byzantine_ids, attack_active=exp.adversary.active)
        self.reassignments: list[dict[str, Any]] = []
        # parameter drift per round is logged when security is on (one copy of D per round)
        self.prev_D = torch.empty_like(self.agg_D) if exp.security is not None and self.coordinator else None
        self.totals = _Timer()
        self.samples = 0
        self.faults = FaultLog(exp.faults, self.out_dir)
        self.restart_note: dict[str, Any] | None = None  # set when this attempt resumed after a dead rank
        # every rank's view of the trust state (for an optimal attack's probe): sent down each round
        self.public_active_N = exp.trust.active_N
        self.public_weights_N = exp.trust.weights_N()
        # digests of every node's parameter copy travel in the meta columns (torch backend, security on)
        self.digest_cols = 32 if exp.security is not None and not exp.comm.shares_parameters else 0
        self.agg_out: Tensor | None = None  # sharded mode: this process's slice of the aggregate
        self.recompute_cols: slice | None = None  # sharded mode: the columns a re-computation is compared on
        self.current_round = 0
        self.was_late = False  # this rank missed the last round's deadline (told by the coordinator)
        self.skip_until = 0  # rounds before it were skipped to catch up
        self.sharded = exp.cfg.aggregation.mode == "sharded" and exp.comm.world_size > 1

    def _alloc_rows(self) -> bool:
        """Whether this loop gathers one (D,) row per local node (data parallelism does)."""
        return True

    # ------------------------------------------------------------------ one round, by phase

    def _compute(self, r: int, assignment: list[list[int]], timer: _Timer) -> Tensor:
        exp = self.exp
        batches = []
        with timer("data"):
            for node in self.comm.local_nodes:
                x, y = exp.batch(node, r, assignment[node])
                x, y = exp.adversary.corrupt_batch(node, x, y, round=r, num_classes=exp.data.num_classes)
                batches.append((x, y))
        with timer("compute"):
            assert exp.computer is not None
            return node_rows(exp, self.comm.local_nodes, r, batches, self.local_RD)

    def _recompute(self, r: int, assignment: list[list[int]]):  # type: ignore[no-untyped-def]
        """A trusted verifier's re-computation of ``node``'s work: same shard batch, same parameters."""

        def recompute(node: int) -> Tensor:
            x, y = self.exp.batch(node, r, assignment[node])
            grad_D = honest_update(self.exp, node, r, x, y)
            return grad_D if self.recompute_cols is None else grad_D[self.recompute_cols]

        return recompute

    def _attack_local(self, r: int) -> None:
        """Each local Byzantine node corrupts its own row, after the coalition's exchange."""
        adv = self.exp.adversary
        if not adv.active(r):
            return
        # an omniscient attacker probes the aggregation as this round will run it: over the nodes
        # trusted so far, with their f (it cannot know this round's verdict)
        probe = RoundAggregation(self, self.public_active_N, self.public_weights_N)
        view_KD, ids = coalition_view(adv, self.comm, self.local_RD, r)
        adv.corrupt_local(
            self.local_RD,
            local_nodes=self.comm.local_nodes,
            view_KD=view_KD,
            view_ids=ids,
            round=r,
            aggregator=probe,
        )

    def _coordinate(
        self,
        r: int,
        updates_ND: Tensor,
        present_N: Tensor,
        assignment: list[list[int]],
        tampered: list[int],
        timer: _Timer,
    ) -> CoordinatorRecord:
        """The coordinator's part: presence, security, trust, aggregation, scheduling."""
        exp = self.exp
        exp.trust.set_presence(present_N)
        n = updates_ND.shape[0]
        positive_N = torch.zeros(n, dtype=torch.bool)
        use_N = exp.trust.active_N
        stage1_N: Tensor | None = None
        recomputations, verify_s = 0, 0.0
        sec_rec: dict[str, Any] | None = None
        quarantined_now: list[int] = []
        reinstated_now: list[int] = []
        if exp.security is not None:
            with timer("security"):
                verdict, sec_rec = exp.security.inspect(
                    updates_ND,
                    round=r,
                    active_N=exp.trust.active_N,
                    recompute=self._recompute(r, assignment),
                    tampered=tampered,
                    present_N=present_N,
                )
            positive_N, stage1_N = verdict.positive_N, verdict.flags_N
            recomputations, verify_s = (
                int(sec_rec.get("recomputations", 0)),
                float(sec_rec.get("verify_s", 0.0)),
            )
            with timer("trust"):
                seen_N = present_N if verdict.observed_N is None else present_N & verdict.observed_N
                events = exp.trust.update(verdict.evidence_N, observed_N=seen_N)
            # trusted and not counted against this round: a row caught now never reaches the aggregate
            use_N = verdict.aggregate_mask(exp.trust.active_N)
            quarantined_now, reinstated_now = events.quarantined, events.reinstated
        active_N = exp.trust.active_N
        weights = self.trust_weights(use_N)
        with timer("aggregate"):
            result, f_eff = self._aggregate(updates_ND[use_N], self.f_budget(active_N), weights)
        self.samples += exp.sampler.batch_size * sum(len(assignment[i]) for i in range(n) if present_N[i])
        with timer("schedule"):
            moves = [m.to_dict() for m in exp.scheduler.reassign(active_N, round_idx=r)]
        self.reassignments += moves
        fault_rec = self.faults.observe(r, present_N, moves)
        self.tracker.record(
            r,
            flags_N=positive_N,
            quarantined_N=exp.trust.quarantined_N,
            stage1_flags_N=stage1_N,
            recomputations=recomputations,
            verify_seconds=verify_s,
        )
        secured = exp.security is not None
        return CoordinatorRecord(
            num_active=int(active_N.sum()),
            num_aggregated=int(use_N.sum()),
            f_eff=f_eff,
            security=sec_rec,
            quarantined_now=quarantined_now,
            reinstated_now=reinstated_now,
            weights=[round(float(v), 4) for v in exp.trust.weights_N()[use_N]]
            if exp.trust.weighted
            else None,
            skipped_update="no trusted row to aggregate" if result is None else None,
            reassignments=moves,
            trust=[round(float(s), 4) for s in exp.trust.scores] if secured else None,
            quarantined=torch.nonzero(exp.trust.quarantined_N).flatten().tolist() if secured else None,
            aggregator=result.info if result is not None else None,
            faults=fault_rec or None,
            privacy=account_round(exp, assignment, r),
        )

    def _aggregate(
        self, rows_MD: Tensor, f: int, weights_M: Tensor | None = None
    ) -> tuple[AggResult | None, int]:
        """Aggregate the usable rows into ``agg_D``; lower f while the rule cannot tolerate it for M rows.

        Returns (None, f) and a zero update when no row is usable (every node distrusted).
        """
        result, f = self.robust(rows_MD, f, weights_M)
        out = self.agg_D if self.agg_out is None else self.agg_out
        if result is None:
            out.zero_()
        else:
            out.copy_(result.value_D)
        return result, f

    def f_budget(self, active_N: Tensor) -> int:
        """The f the aggregator is run with: the configured f less the quarantined nodes.

        The f policy, in one place for every layout: a quarantined node was proven Byzantine, so the
        active nodes hold at most f - q Byzantine ones and the rule stops discarding honest work
        once the attackers are out. :meth:`robust` lowers it further while the rule cannot
        tolerate it for the rows at hand.
        """
        quarantined = ~active_N & ~self.exp.trust.absent_N.to(
            active_N.device
        )  # absent nodes are not proven Byzantine
        return max(0, self.exp.aggregator.f - int(quarantined.sum()))

    def trust_weights(self, use_N: Tensor, weights_N: Tensor | None = None) -> Tensor | None:
        """With ``trust.weighted_aggregation``: the used rows' trust scores, summing to 1; else None."""
        if not self.exp.trust.weighted:
            return None
        w = (self.exp.trust.weights_N() if weights_N is None else weights_N)[use_N]
        return w / w.sum() if float(w.sum()) > 0 else None

    def robust(
        self, rows_MD: Tensor, f: int, weights_M: Tensor | None = None
    ) -> tuple[AggResult | None, int]:
        """The aggregator on these rows, with f lowered to what the rule declares it tolerates for
        them (``Aggregator.max_f``); (None, f) if there are no rows."""
        if rows_MD.shape[0] == 0:
            return None, f
        f = max(0, min(f, self.exp.aggregator.max_f(rows_MD.shape[0])))  # at none: the rule's own error
        return self.exp.aggregator(rows_MD, weights_M, f=f), f

    def _meta(self, losses_R: Tensor, r: int) -> Tensor:
        """Per local node, float64: [present, loss, parameter digest (torch backend, security on)].

        The loss goes through the rows' dtype first, so the logged mean is the same on every backend.
        """
        exp, nodes = self.exp, self.comm.local_nodes
        meta = torch.zeros(len(nodes), 2 + self.digest_cols, dtype=torch.float64)
        absent = exp.faults.missing if self.comm.world_size == 1 else exp.faults.reports_absent
        meta[:, 0] = torch.tensor([0.0 if absent(node, r) else 1.0 for node in nodes], dtype=torch.float64)
        meta[:, 1] = losses_R.detach().to(self.local_RD.dtype).cpu().to(torch.float64)
        if self.digest_cols:
            meta[:, 2:] = ParameterMonitor.digest(exp.flat.params_D.detach()).cpu().to(torch.float64)
        return meta

    def _tampered(self, meta_NK: Tensor, present_N: Tensor) -> list[int]:
        """Nodes whose copy of the parameters differs from the coordinator's (torch backend only):
        each node's digest came in its meta columns; simulated nodes share the coordinator's copy."""
        if not self.digest_cols:
            return []
        digests = [meta_NK[i, 2:].to(torch.uint8) if present_N[i] else None for i in range(meta_NK.shape[0])]
        return ParameterMonitor.check(self.exp.flat.params_D.detach(), digests)

    def _public_state(self, late_ranks: list[int]) -> Tensor:
        """What the coordinator tells every rank after a round: shard holders, who is active, trust
        weights, and which ranks missed the round's deadline (they catch up)."""
        exp = self.exp
        n = exp.cfg.distributed.num_nodes
        s, w = exp.scheduler.num_shards, self.comm.world_size
        out = torch.zeros(s + 2 * n + w, dtype=torch.float64)
        if self.coordinator:
            out[:s] = torch.tensor(exp.scheduler.holder, dtype=torch.float64)
            out[s : s + n] = exp.trust.active_N.to(torch.float64)
            out[s + n : s + 2 * n] = exp.trust.weights_N()
            out[s + 2 * n + torch.tensor(late_ranks, dtype=torch.long)] = 1.0
        return out

    def _load_public_state(self, state: Tensor) -> None:
        exp = self.exp
        n, s = exp.cfg.distributed.num_nodes, exp.scheduler.num_shards
        exp.scheduler.holder = [int(h) for h in state[:s].tolist()]
        self.public_active_N = state[s : s + n] > 0.5
        self.public_weights_N = state[s + n : s + 2 * n].clone()
        self.was_late = bool(state[s + 2 * n + self.comm.rank] > 0.5)

    def _catch_up(self, r: int) -> None:
        """A rank that missed round ``r``'s deadline skips the rounds whose results already wait:
        it reports its rows absent and applies the results, until it is back in step."""
        exp, comm = self.exp, self.comm
        meta = torch.zeros(len(comm.local_nodes), 2 + self.digest_cols, dtype=torch.float64)
        public = self._public_state([])
        r2 = r + 1
        while self.was_late and r2 < exp.total_rounds and comm.results_ready([self.agg_D, public], r2):
            comm.exchange(self.local_RD, meta, r2, None)  # absent: the coordinator's late receive completes
            comm.send_down([self.agg_D, public], r2)
            self._load_public_state(public)
            exp.optimizer.step(self.agg_D, r2)
            self.skip_until = r2 = r2 + 1

    def _round(self, r: int) -> dict[str, Any]:
        if self.exp.redundancy is not None:  # DETOX / ByzShield: votes over replicated files
            return redundant_round(self, r)
        exp, comm = self.exp, self.comm
        timer = _Timer()
        assignment, meta_RK = self._node_work(r, timer)
        if comm.world_size > 1:
            exp.faults.act(comm.local_nodes, r)  # an injected crash or delay, in this rank's own process
        with timer("gather"):
            got = comm.exchange(self.local_RD, meta_RK, r, exp.cfg.distributed.round_timeout_s)
        rec: dict[str, Any] = {"round": r, "epoch": r // exp.rounds_per_epoch}
        late_ranks: list[int] = []
        if self.coordinator:
            assert got is not None
            late_ranks = got.late_ranks
            present_N = got.present_N
            rec["loss"] = self._mean_loss(got.meta_NK, present_N)
            tampered = self._tampered(got.meta_NK, present_N) if exp.security is not None else []
            rec.update(self._coordinate(r, got.rows_ND, present_N, assignment, tampered, timer).to_dict())
        with timer("broadcast"):
            public = self._public_state(late_ranks)
            comm.send_down([self.agg_D, public], r)
            if self.coordinator:
                self.public_active_N = exp.trust.active_N
                self.public_weights_N = exp.trust.weights_N()
            else:
                self._load_public_state(public)
        self._step(r, rec, timer)
        if self.was_late and not self.coordinator:
            self._catch_up(r)
        return self._finish_round(r, rec, timer)

    def _node_work(self, r: int, timer: _Timer) -> tuple[list[list[int]], Tensor]:
        """What every process does for its nodes before anything is sent: their rows (gradients,
        then the Byzantine nodes' own corruption) and their meta. Returns (assignment, meta_RK)."""
        assignment = self.exp.scheduler.assignment()
        losses_R = self._compute(r, assignment, timer)
        with timer("attack"):
            self._attack_local(r)
        return assignment, self._meta(losses_R, r)

    def _mean_loss(self, meta_NK: Tensor, present_N: Tensor) -> float:
        """The round's training loss: the mean over the nodes whose rows arrived."""
        losses = meta_NK[present_N, 1].to(self.local_RD.dtype)
        return float(losses.mean()) if losses.numel() else float("nan")

    def _step(self, r: int, rec: dict[str, Any], timer: _Timer) -> None:
        """Apply ``agg_D`` on this process (every process holds the parameters); log its norm, the
        learning rate and, with security on, the parameter drift."""
        exp = self.exp
        with timer("step"):
            rec["update_norm"] = float(self.agg_D.norm())
            before_D = self.prev_D.copy_(exp.flat.params_D.detach()) if self.prev_D is not None else None
            rec["lr"] = exp.optimizer.step(self.agg_D, r)
            if before_D is not None:
                rec.update(ParameterMonitor.stats(exp.flat.params_D.detach(), before_D))

    def _finish_round(self, r: int, rec: dict[str, Any], timer: _Timer) -> dict[str, Any]:
        """Every layout's round ends so: the coordinator evaluates on eval rounds; phase timings."""
        exp = self.exp
        if self.coordinator and exp.is_eval_round(r):
            with timer("eval"):
                rec.update(eval_record(exp))
        rec["time"] = {k: round(v, 6) for k, v in timer.split.items()}
        for k, v in timer.split.items():
            self.totals.split[k] += v
        return rec

    # ------------------------------------------------------------------ the run

    def resume(self, state: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Continue a run from a checkpoint: restore every component, keep the earlier records."""
        self.start_round = restore(self, state)
        self.log.records = list(records)
        self.wall_before = float(state["loop"].get("wall_s", 0.0))

    wall_before = 0.0

    def extra_state(self) -> dict[str, Any]:
        """What a layout adds to the checkpoint (pipelines: snapshots, verifier, migrations)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def run(self) -> RunResult:
        exp = self.exp
        cfg = exp.cfg
        every = cfg.output.checkpoint_every
        ckpt = self.out_dir / CHECKPOINT if self.out_dir is not None and every > 0 else None
        progress = RunProgress(
            exp.total_rounds - self.start_round, enabled=self.coordinator and cfg.output.progress
        )
        t0 = time.perf_counter()
        restore_sigterm = stop_on_sigterm() if self.coordinator and self.comm.world_size > 1 else _no_op
        try:
            for r in range(self.start_round, exp.total_rounds):
                self.current_round = r
                if r < self.skip_until:  # skipped by a lagging rank to catch up
                    continue
                rec = sharded_round(self, r) if self.sharded else self._round(r)
                self.log.write(rec)
                if self.coordinator:
                    status = f"loss {rec['loss']:.3f}"
                    if "test_accuracy" in rec:
                        status += f"  acc {rec['test_accuracy']:.3f}"
                    progress.advance(status)
                if ckpt is not None and (r + 1) % every == 0 and r + 1 < exp.total_rounds:
                    wall = self.wall_before + time.perf_counter() - t0
                    save_checkpoint(self, ckpt, next_round=r + 1, wall_s=wall)
        except RankFailure as failure:
            # name the dead rank on disk before this process exits: torchrun restarts the group
            # and the resumed run reports it (engine/fault_log.py)
            self.faults.append(
                {
                    "event": "rank_failed",
                    "round": failure.round,
                    "rank": failure.rank,
                    "nodes": list(self.comm.nodes_of(failure.rank)),
                    "reason": failure.reason,
                    "attempt": restart_attempt(),
                    "last_completed_round": failure.round - 1,
                }
            )
            raise
        except LauncherStop as stop:
            # torchrun tore the group down (a rank died) before this coordinator could name it
            self.faults.append(
                {
                    "event": "group_stopped",
                    "round": self.current_round,
                    "attempt": restart_attempt(),
                    "reason": str(stop),
                }
            )
            raise SystemExit(143) from None
        finally:
            restore_sigterm()
            progress.close()
            self.log.close()
        wall = self.wall_before + time.perf_counter() - t0
        traffic = self.comm.traffic_by_rank()  # collective: every process reports its bytes
        summary: dict[str, Any] = (
            self._summary(wall) if self.coordinator else {"rank": self.comm.rank, "wall_s": round(wall, 3)}
        )
        if traffic is not None and self.comm.world_size > 1:
            summary["communication"] = traffic_summary(self, traffic, exp.total_rounds - self.start_round)
        if self.out_dir is not None:
            save_final_weights(
                getattr(exp.flat, "unsplit", exp.flat.model),  # a pipeline's: the model as given
                self.out_dir,
                metadata={"rounds": str(exp.total_rounds), "model": summary["model"]},
            )
            summary["weights"] = WEIGHTS_FILE
            write_json_atomic(self.out_dir / "summary.json", summary)
            if cfg.output.plots:
                plot_training(self.log.records, self.out_dir, language_model=exp.data.kind == "text")
                self._extra_plots()
        return RunResult(history=self.log.records, summary=summary, out_dir=self.out_dir, experiment=exp)

    def _extra_plots(self) -> None:
        extra_plots(self)

    def _summary(self, wall: float) -> dict[str, Any]:
        return run_summary(self, wall)
