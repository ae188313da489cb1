"""What a pipeline run leaves behind: weights that load into the unsplit model, a summary that a
resume does not change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trustworthy_dl.cli import main
from trustworthy_dl.config import config_from_dict
from trustworthy_dl.engine.pipeline_loop import PipelineLoop
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.setup import build_model
from trustworthy_dl.report.weights import load_final_weights

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


@pytest.mark.slow
def test_a_resumed_pipeline_run_reports_the_same_verification_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = run_experiment(_resume_cfg(tmp_path / "full")).summary["verification"]
    step = PipelineLoop._round

    def crash(self: PipelineLoop, r: int) -> Any:
        if r == 6:
            raise KeyboardInterrupt
        return step(self, r)

    monkeypatch.setattr(PipelineLoop, "_round", crash)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_resume_cfg(tmp_path / "cut"))
    monkeypatch.setattr(PipelineLoop, "_round", step)
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())["verification"]
    assert cut["recomputed_per_step"] == full["recomputed_per_step"] > 0
