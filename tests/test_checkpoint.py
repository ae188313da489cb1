"""Checkpoint and resume: an interrupted run continues exactly where it stopped, and bad input
(no checkpoint, a finished run, a damaged file, another config) is a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trustworthy_dl.cli import main
from trustworthy_dl.config import config_from_dict
from trustworthy_dl.engine.loop import RoundLoop
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.report.metrics import read_metrics


def _cfg(out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    data = {
        "data": {"name": "digits"},
        "training": {"batch_size": 16, "max_rounds": 10, "eval_every": 4},
        "distributed": {"num_nodes": 6},
        "attack": {"name": "sign_flip", "num_byzantine": 1},
        "aggregation": {"name": "centered_clip", "params": {"f": 1, "iterations": 5}},  # stateful
        "security": {"attack_detection": True, "gradient_verification": True},
        "output": {"dir": str(out), "progress": False, "plots": False, "checkpoint_every": 3},
    }
    for k, v in extra.items():
        data.setdefault(k, {}).update(v)
    return config_from_dict(data)


def _strip(obj: Any) -> Any:
    """The records without wall-clock fields (time splits, seconds spent): those never repeat."""
    if isinstance(obj, dict):
        return {
            k: _strip(v)
            for k, v in obj.items()
            if k != "time" and "seconds" not in k and not k.endswith("_s")
        }
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _crash_at(monkeypatch: pytest.MonkeyPatch, round_idx: int) -> None:
    original = RoundLoop._round

    def crashing(self: RoundLoop, r: int) -> dict[str, Any]:
        if r == round_idx:
            raise KeyboardInterrupt("simulated crash")
        return original(self, r)

    monkeypatch.setattr(RoundLoop, "_round", crashing)


def test_resumed_run_equals_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = run_experiment(_cfg(tmp_path / "full"))
    assert (tmp_path / "full" / "checkpoint.pt").is_file()  # the last one (after round 8) is kept
    with monkeypatch.context() as m:
        _crash_at(m, 7)  # checkpoints after rounds 2 and 5: resumes at round 6
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_cfg(tmp_path / "cut"))
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert len(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == 7
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["round"] for r in cut] == list(range(10))
    assert _strip(cut) == _strip(full.history)
    # the interrupted attempt's records are kept aside, not lost
    assert len(read_metrics(tmp_path / "cut" / "metrics.interrupted-1.jsonl")) == 7
    s_full = full.summary
    s_cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s_cut["final"] == s_full["final"]
    for key in ("tpr", "fpr", "latency_rounds_median", "false_quarantines"):
        assert s_cut["detection"][key] == s_full["detection"][key]
    assert s_cut["trust"]["final_scores"] == s_full["trust"]["final_scores"]
    params_full = full.experiment.flat.params_D.detach()
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["next_round"] == 9 and state["params"].shape == params_full.shape


def test_resume_errors_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a finished run
    run_experiment(_cfg(tmp_path / "done"))
    assert main(["run", "--resume", str(tmp_path / "done")]) == 2
    assert "finished run" in capsys.readouterr().err
    # not a run directory
    assert main(["run", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "a run directory?" in capsys.readouterr().err
    # a run without checkpoints
    with monkeypatch.context() as m:
        _crash_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_cfg(tmp_path / "nockpt", output={"checkpoint_every": 0}))
    assert main(["run", "--resume", str(tmp_path / "nockpt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # a damaged checkpoint
    with monkeypatch.context() as m:
        _crash_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_cfg(tmp_path / "bad"))
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["run", "--resume", str(tmp_path / "bad")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert len(read_metrics(tmp_path / "bad" / "metrics.jsonl")) == 5  # nothing written was lost
    # another config (outside `output`) than the checkpoint's
    with monkeypatch.context() as m:
        _crash_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_cfg(tmp_path / "other"))
    assert main(["run", "--resume", str(tmp_path / "other"), "--set", "training.learning_rate=0.5"]) == 2
    err = capsys.readouterr().err
    assert "another config (training.learning_rate: 0.05 in the checkpoint, 0.5 now)" in err
    assert not (tmp_path / "other" / "metrics.interrupted-1.jsonl").exists()  # refused before any file moved
    # CONFIG and --resume together, for run and for launch
    assert main(["run", "configs/quickstart.yaml", "--resume", str(tmp_path / "other")]) == 2
    assert "drop CONFIG" in capsys.readouterr().err
    assert main(["launch", "-n", "2", "configs/quickstart.yaml", "--resume", str(tmp_path / "other")]) == 2
    assert "drop CONFIG" in capsys.readouterr().err
    assert main(["launch", "-n", "2", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "a run directory?" in capsys.readouterr().err


def test_config_difference_allows_settings_added_later() -> None:
    from trustworthy_dl.engine.checkpoint import config_difference

    saved = {"training": {"lr": 0.1, "momentum": 0.9}, "trust": {"threshold": 0.7}}
    assert config_difference(saved, {**saved, "trust": {"threshold": 0.7, "weighted": False}}) is None
    assert config_difference(saved, {**saved, "training": {"lr": 0.2, "momentum": 0.9}}) == (
        "training.lr: 0.1 in the checkpoint, 0.2 now"
    )
    assert "absent now" in (config_difference(saved, {"training": saved["training"]}) or "")


@pytest.mark.slow
def test_pipeline_run_resumes_exactly_across_a_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hybrid run with a tampering stage, interrupted after its migration, resumes to the same records."""
    from trustworthy_dl.engine.pipeline_loop import PipelineLoop

    def cfg(out: Path):  # type: ignore[no-untyped-def]
        return _cfg(
            out,
            training={"max_rounds": 14, "eval_every": 7},
            distributed={
                "num_nodes": 7,
                "parallelism": "hybrid",
                "num_stages": 3,
                "replicas": 2,
                "spares": 1,
            },
            attack={"name": "parameter_tamper", "num_byzantine": 0, "byzantine_ids": [1], "start_round": 4},
            aggregation={"name": "mean", "params": {}},
            trust={"snapshot_every": 2},
        )

    full = run_experiment(cfg(tmp_path / "full"))
    assert full.summary["migrations"]["count"] == 1
    original = PipelineLoop._round

    def crashing(self: PipelineLoop, r: int) -> dict[str, Any]:
        if r == 11:
            raise KeyboardInterrupt("simulated crash")
        return original(self, r)

    with monkeypatch.context() as m:
        m.setattr(PipelineLoop, "_round", crashing)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg(tmp_path / "cut"))
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert _strip(cut) == _strip(full.history)
    s_cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s_cut["final"] == full.summary["final"]
    assert _strip(s_cut["migrations"]) == _strip(full.summary["migrations"])
