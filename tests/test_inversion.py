"""Gradient inversion: the attacks recover a known input from its gradient on a tiny model, the
quality metrics and the label rule behave, and ``tdl privacy-audit`` writes its report and
refuses bad input with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trustworthy_dl.cli import main
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.privacy.inversion import image_quality, infer_labels, invert, label_accuracy


def _tiny() -> tuple[nn.Module, FlatModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.Sigmoid(), nn.Linear(24, 5))
    flat = FlatModel(model)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([3])
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, flat.params)])
    return model, flat, x, y, g


@pytest.mark.parametrize(
    ("attack", "iters", "min_psnr"), [("idlg", 30, 40.0), ("dlg", 30, 30.0), ("ig", 400, 15.0)]
)
def test_attacks_recover_a_known_input(attack: str, iters: int, min_psnr: float) -> None:
    model, flat, x, _, g = _tiny()
    rec = invert(
        attack,
        model,
        g,
        flat.unflatten,
        shape_BCHW=(1, 1, 4, 4),
        num_classes=5,
        box=(0.0, 1.0),
        iterations=iters,
    )
    psnr, ssim = image_quality(rec.x_BCHW, x)
    assert psnr[0] > min_psnr and ssim[0] > 0.5
    assert rec.labels_B.tolist() == [3]
    noise_only = invert(
        attack,
        model,
        torch.randn_like(g) * 10,
        flat.unflatten,
        shape_BCHW=(1, 1, 4, 4),
        num_classes=5,
        box=(0.0, 1.0),
        iterations=iters,
    )
    assert image_quality(noise_only.x_BCHW, x)[0][0] < min_psnr  # a noise update reveals nothing


def test_idlg_label_rule_and_metrics() -> None:
    grads = {"head.weight": torch.tensor([[0.2, 0.1], [-0.5, -0.1], [0.3, 0.0]])}
    assert infer_labels(grads, 1, "head.weight").tolist() == [1]
    assert label_accuracy(torch.tensor([2, 1]), torch.tensor([1, 2])) == 1.0
    assert label_accuracy(torch.tensor([1, 1]), torch.tensor([1, 2])) == 0.5
    img = torch.rand(2, 1, 8, 8)
    psnr, ssim = image_quality(img, img)
    assert psnr[0] > 80 and ssim[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown inversion attack"):
        invert(
            "gan",
            nn.Linear(2, 2),
            torch.zeros(6),
            lambda v: {},
            shape_BCHW=(1, 2),
            num_classes=2,
            box=(0, 1),
            iterations=1,
        )


def _audit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "privacy-audit",
        "--set", "data.name=digits",
        "--set", "model.name=mlp",
        "--set", "distributed.num_nodes=4",
        "--set", "privacy.enabled=true",
        "--set", "privacy.noise_multiplier=1.0",
        "--out", str(tmp_path / "audit"),
        "--quiet",
        *extra,
    ]  # fmt: skip


def test_privacy_audit_writes_its_report(tmp_path: Path) -> None:
    args = _audit_args(tmp_path, "--images", "2", "--iterations", "3", "--rounds", "0,2", "--attack", "idlg")
    assert main(args) == 0
    rep = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [(r["round"], r["setting"]) for r in rep["results"]] == [
        (0, "none"), (0, "privacy"), (2, "none"), (2, "privacy")
    ]  # fmt: skip
    assert rep["privacy"]["epsilon_at_run_end"] > 0
    assert "epsilon" not in rep["privacy"]  # the untrained audit experiment's own spend (0) is not reported
    assert all(len(r["psnr_db_per_image"]) == 2 for r in rep["results"])
    assert (tmp_path / "audit" / "grid_round2.png").stat().st_size > 1000
    assert "| 0 | privacy |" in (tmp_path / "audit" / "audit.md").read_text()


def test_privacy_audit_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_audit_args(tmp_path, "--batch-size", "64")) == 2
    assert "budget" in capsys.readouterr().err
    assert main(_audit_args(tmp_path, "--attack", "gan")) == 2
    assert "not an inversion attack" in capsys.readouterr().err
    assert main(_audit_args(tmp_path, "--rounds", "a,b")) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(_audit_args(tmp_path, "--iterations", "0")) == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err
    assert main(_audit_args(tmp_path, "--rounds", "1000000", "--images", "1")) == 2
    assert "past the run's end" in capsys.readouterr().err
    (tmp_path / "audit" / "audit.json").write_text("{}")  # an earlier audit is not overwritten unasked
    assert main(_audit_args(tmp_path)) == 2
    assert "already holds an audit" in capsys.readouterr().err
    args = ["privacy-audit", "configs/gpt2_tiny.yaml", "--out", str(tmp_path / "t"), "--quiet"]
    assert main(args) == 2
    assert "reconstructs images" in capsys.readouterr().err


def test_activation_inversion_recovers_a_shallow_stage_input() -> None:
    from trustworthy_dl.privacy.inversion.activations import invert_activations

    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid())
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        act = stage(x)
    rec, err = invert_activations(stage, act, shape_BCHW=(1, 1, 6, 6), box=(0.0, 1.0), iterations=30)
    assert image_quality(rec, x)[0][0] > 40 and err < 1e-6
    assert all(p.requires_grad for p in stage.parameters())  # the stage is left as it was


@pytest.mark.slow
def test_privacy_audit_of_a_pipeline_inverts_stage_one_activations(tmp_path: Path, shared_data: Path) -> None:
    args = [
        "privacy-audit", "configs/hybrid_fmnist.yaml",
        "--set", "model.name=cnn", "--set", "distributed.parallelism=model", "--set", "distributed.num_nodes=3",
        "--set", "distributed.num_stages=3", "--set", "distributed.replicas=1", "--set", "distributed.spares=0",
        "--set", "attack.name=none", "--set", "attack.also=[]", "--set", "attack.byzantine_ids=null",
        "--out", str(tmp_path / "p"), "--images", "1", "--iterations", "20", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    rep = json.loads((tmp_path / "p" / "audit.json").read_text())
    assert rep["attack"] == "activation_inversion" and rep["results"][0]["setting"] == "activations"
    assert rep["results"][0]["psnr_db"] > 12  # a shallow first stage gives its input away
