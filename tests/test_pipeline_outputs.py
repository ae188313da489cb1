"""What a pipeline run leaves behind: weights that load into the unsplit model, a summary that a
resume does not change."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline_configs import cnn_pipeline, gpt2_pipeline
from trustworthy_dl.cli import main
from trustworthy_dl.config import TrainingConfig, config_from_dict
from trustworthy_dl.engine.optim import CoordinatorOptimizer
from trustworthy_dl.engine.pipeline_exec import HolderPlan, StageRunner
from trustworthy_dl.engine.pipeline_loop import PipelineLoop
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.setup import build_model
from trustworthy_dl.engine.staged import StagedModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.models import get_model
from trustworthy_dl.report.weights import load_final_weights
from trustworthy_dl.security.pipeline_verify import PipelineVerifier

TEXT = {"name": "text", "block_size": 16, "max_train_samples": 256, "max_test_samples": 16}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "data"), [({"name": "cnn"}, {"name": "digits"}), ({"name": "gpt2", "size": "tiny"}, TEXT)]
)
def test_pipeline_weights_load_into_the_unsplit_model(tmp_path: Path, model: dict, data: dict) -> None:
    cfg = config_from_dict(
        {
            "model": model,
            "data": data,
            "training": {"batch_size": 8, "max_rounds": 3, "eval_every": 3},
            "distributed": {"num_nodes": 3, "parallelism": "model"},
            "output": {"progress": False, "plots": False},
        }
    )
    res = run_experiment(cfg, out_dir=tmp_path)
    exp = res.experiment
    fresh = build_model(cfg, exp.data, torch.device("cpu"))
    fresh.load_state_dict(load_final_weights(tmp_path / "model.safetensors"))  # the model's own names
    fresh.eval()
    exp.flat.model.eval()
    x = exp.data.x_test[:4]
    torch.testing.assert_close(fresh(x), exp.flat.model(x), rtol=1e-5, atol=1e-6)


def _resume_cfg(out: Path) -> Any:
    return config_from_dict(
        {
            "seed": 0,
            "model": {"name": "cnn"},
            "data": {"name": "digits"},
            "training": {"batch_size": 16, "max_rounds": 8, "eval_every": 8},
            "distributed": {"num_nodes": 4, "parallelism": "model", "num_stages": 3, "spares": 1},
            "security": {
                "attack_detection": True,
                "gradient_verification": True,
                "pipeline_verify_rate": 0.5,
            },
            "attack": {"name": "parameter_tamper", "byzantine_ids": [1], "start_round": 3},
            "output": {"dir": str(out), "progress": False, "plots": False, "checkpoint_every": 2},
        }
    )


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, cfg: Any, round_idx: int) -> None:
    """Run ``cfg`` until round ``round_idx`` raises KeyboardInterrupt (a crash); rounds run normally after."""
    step = PipelineLoop._round

    def crash(self: PipelineLoop, r: int) -> Any:
        if r == round_idx:
            raise KeyboardInterrupt
        return step(self, r)

    with monkeypatch.context() as m:
        m.setattr(PipelineLoop, "_round", crash)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg)


@pytest.mark.slow
def test_a_resumed_pipeline_run_reports_the_same_verification_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = run_experiment(_resume_cfg(tmp_path / "full")).summary["verification"]
    _interrupt_at(monkeypatch, _resume_cfg(tmp_path / "cut"), 6)
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())["verification"]
    assert cut["recomputed_per_step"] == full["recomputed_per_step"] > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_frozen_step_leaves_those_coordinates_and_their_state_alone(optimizer: str) -> None:
    cfg = TrainingConfig(optimizer=optimizer, momentum=0.9, weight_decay=0.1, learning_rate=0.1)
    free = torch.nn.Parameter(torch.linspace(-1, 1, 10))
    part = torch.nn.Parameter(free.detach().clone())
    opt_free, opt_part = (CoordinatorOptimizer(p, cfg, total_rounds=5) for p in (free, part))
    frozen = torch.zeros(10, dtype=torch.bool)
    frozen[3:6] = True
    start, state0 = part.detach().clone(), {}
    for r in range(3):
        g = torch.full((10,), 0.5 + r)
        opt_free.step(g, r)
        opt_part.step(g * ~frozen if r else g, r, frozen_D=frozen if r else None)  # frozen from step 1
        if r == 0:
            start = part.detach().clone()
            state0 = {
                k: v.clone()
                for k, v in opt_part.opt.state[part].items()
                if torch.is_tensor(v) and v.numel() == 10
            }
    assert state0  # momentum buffer / Adam moments
    assert torch.equal(part.detach()[frozen], start[frozen])  # not moved by momentum or decay
    torch.testing.assert_close(part.detach()[~frozen], free.detach()[~frozen])
    for k, v in state0.items():
        assert torch.equal(opt_part.opt.state[part][k][frozen], v[frozen]), k
        assert not torch.equal(opt_part.opt.state[part][k][~frozen], v[~frozen]), k


def test_frozen_columns_keep_tied_copies_updated_together() -> None:
    torch.manual_seed(0)
    staged = StagedModel(get_model("gpt2", size="tiny", vocab_size=64, block_size=16), 4)
    assert staged.ties  # the embedding and the output head
    tie = staged.ties[0]
    only_first = torch.tensor([1.0, 0.0, 0.0, 0.0])
    frozen = staged.frozen_columns(only_first)
    assert frozen is not None and not frozen[tie.first].any() and not frozen[tie.second].any()
    assert frozen[staged.cols[0]].sum() == staged.stage_sizes()[0] - (tie.first.stop - tie.first.start)
    both = staged.frozen_columns(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert both is not None and both[tie.first].all() and both[tie.second].all()
    assert staged.frozen_columns(torch.zeros(4)) is None


@pytest.mark.slow
def test_a_time_balanced_cut_is_measured_once_and_kept_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trustworthy_dl.engine.pipeline_setup as setup

    def cfg() -> Any:
        c = _resume_cfg(tmp_path / "run").to_dict()
        c["distributed"].update(num_nodes=3, num_stages=2, spares=1, stage_balance="time")
        return config_from_dict(c)

    monkeypatch.setattr(setup, "block_times", lambda model, x: [1.0, 1.0, 4.0])  # cut after block 2
    _interrupt_at(monkeypatch, cfg(), 5)
    monkeypatch.setattr(setup, "block_times", lambda model, x: [4.0, 1.0, 1.0])  # would cut after block 1
    assert main(["run", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    fresh = run_experiment(cfg(), out_dir=tmp_path / "other").summary  # a new run measures anew
    assert summary["pipeline"]["stage_params"] != fresh["pipeline"]["stage_params"]
    monkeypatch.setattr(setup, "block_times", lambda model, x: [1.0, 1.0, 4.0])
    first = run_experiment(cfg(), out_dir=tmp_path / "first").summary
    assert summary["pipeline"]["stage_params"] == first["pipeline"]["stage_params"]


@pytest.mark.slow
def test_migrating_a_stage_with_a_tied_copy_keeps_the_copies_and_their_state_equal() -> None:
    data = gpt2_pipeline(
        data=TEXT,
        training={"max_rounds": 8},
        security={"pipeline_verify_rate": 0.5},
        trust={"snapshot_every": 3},
        attack={"name": "parameter_tamper", "byzantine_ids": [3], "start_round": 4},  # the head's stage
        output={"plots": False},
    )
    res = run_experiment(config_from_dict(data), write=False)
    assert [e["stage"] for e in res.summary["migrations"]["events"]] == [3]
    exp = res.experiment
    vectors = [exp.flat.params_D.detach(), *exp.optimizer.state_vectors()]
    assert len(vectors) == 3  # parameters, exp_avg, exp_avg_sq
    for tie in exp.pipeline.staged.ties:
        for v in vectors:
            assert torch.equal(v[tie.first], v[tie.second])


def test_verifier_re_runs_leave_batchnorm_statistics_alone() -> None:
    torch.manual_seed(0)
    model = get_model("cnn", num_classes=10, in_channels=1, image_size=28, norm="batch").train()
    torch.manual_seed(0)
    ref = get_model("cnn", num_classes=10, in_channels=1, image_size=28, norm="batch").train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    staged = StagedModel(model, 3)
    runner = StageRunner(staged, Task("image"))
    rows = [torch.empty(d) for d in staged.stage_sizes()]
    out = runner.run_replica([(x, y)], [HolderPlan()] * 3, rows, schedule="1f1b")
    PipelineVerifier(rate=1.0).check(runner, [out], [0, 1, 2], 0)  # re-runs every stage
    runner.recompute(1, out.hops[1][0])
    ref(x)  # one training forward of the unsplit model
    mine, theirs = dict(staged.model.named_buffers()), list(ref.named_buffers())
    assert len(mine) == len(theirs) > 0
    for (_, a), (_, b) in zip(mine.items(), theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_huge_finite_activations_blame_their_sender_not_the_honest_stages_downstream() -> None:
    """Stage 0 scales its activations by 1e30: finite, so they pass the message check, and the
    honest stage 1 then overflows to NaN on them; only stage 0 is blamed and moved."""
    data = cnn_pipeline(
        training={"max_rounds": 8, "optimizer": "sgd", "learning_rate": 0.05},
        security={"pipeline_verify_rate": 0.25},
        attack={
            "name": "activation_tamper",
            "byzantine_ids": [0],
            "start_round": 3,
            "params": {"mode": "scale", "strength": 1e30},
        },
    )
    res = run_experiment(config_from_dict(data), write=False)
    det = res.summary["detection"]
    assert det["false_quarantines"] == 0 and det["detected"] == 1
    assert [(e["stage"], e["from"]) for e in res.summary["migrations"]["events"]] == [(0, 0)]
    # the poisoned steps (NaN loss) were dropped: training is sound once stage 0 has moved
    after = [r["loss"] for r in res.history if r["round"] > res.summary["migrations"]["events"][0]["round"]]
    assert after and all(isinstance(v, float) and math.isfinite(v) for v in after)


def test_recovery_steps_count_from_the_step_after_the_migration() -> None:
    from types import SimpleNamespace

    from trustworthy_dl.engine.pipeline_summary import _recovery_steps

    losses = [1.0] * 10 + [9.0, 9.0] + [1.0] * 10  # attack from step 10, migration at step 11
    loop = SimpleNamespace(
        tracker=SimpleNamespace(attack_start=10),
        migrations=[{"round": 11}],
        log=SimpleNamespace(records=[{"loss": v} for v in losses]),
    )
    assert _recovery_steps(loop) == 0  # steps 12-16 are back at the pre-attack level at once
    losses[12] = 9.0  # the first step after the migration still high: one step to recover
    loop.log.records = [{"loss": v} for v in losses]
    assert _recovery_steps(loop) == 1


@pytest.mark.slow
def test_a_late_quarantine_after_old_evidence_still_rolls_the_stage_back() -> None:
    """Evidence at step 3 (one tampered step), then clean, then tampering again from step 14: every
    kept snapshot is newer than the first evidence, so the oldest kept one is restored (was none)."""
    again = {"name": "parameter_tamper", "byzantine_ids": [1], "start_round": 14}
    data = cnn_pipeline(
        training={"max_rounds": 18},
        security={"pipeline_verify_rate": 0.5},
        attack={
            "name": "parameter_tamper",
            "byzantine_ids": [1],
            "start_round": 3,
            "end_round": 3,
            "also": [again],
        },
    )
    (event,) = run_experiment(config_from_dict(data), write=False).summary["migrations"]["events"]
    assert (
        event["from"] == 1 and event["restored_from_round"] is not None and event["restored_from_round"] > 3
    )
    assert "predates every kept snapshot" in event["note"]
