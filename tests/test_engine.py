"""The round loop: per-node gradients, end-to-end runs, determinism, output files, backends agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trustworthy_dl import DistributedTrainer
from trustworthy_dl.cli import main
from trustworthy_dl.config import config_from_dict, load_config
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.node_compute import NodeComputer
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models import get_model

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "training": {"num_epochs": 1, "max_rounds": 4, "batch_size": 8},
    "distributed": {"num_nodes": 4},
    "output": {"progress": False, "plots": False},
}


def _cfg(**sections):  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(SMALL))
    for k, v in sections.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return config_from_dict(data)


def test_flat_params_are_views_of_one_vector() -> None:
    torch.manual_seed(0)
    model = get_model("cnn", num_classes=10, in_channels=1, image_size=8)
    flat = FlatModel(model)
    assert flat.num_params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        flat.params_D.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_node_rows_are_each_nodes_gradient(mode: str) -> None:
    torch.manual_seed(0)
    model = get_model("cnn", num_classes=10, in_channels=1, image_size=8)
    flat = FlatModel(model)
    comp = NodeComputer(flat, Task("image"), mode=mode)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 10, (5,), generator=g)) for _ in range(3)
    ]
    out = torch.empty(3, flat.num_params)
    losses = comp.compute(batches, out)
    for i, (x, y) in enumerate(batches):
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in flat.params])
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-6)
        assert float(losses[i]) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_end_to_end_run_writes_every_file(tmp_path: Path) -> None:
    cfg = _cfg(output={"plots": True, "progress": False})
    res = run_experiment(cfg, out_dir=tmp_path / "run")
    out = tmp_path / "run"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 == res.summary["rounds"]
    rec = json.loads(lines[0])
    assert {"round", "loss", "lr", "time"} <= set(rec) and rec["time"]["compute"] > 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "perplexity"):
        assert key in summary["final"]
    assert summary["final"]["test_accuracy"] is not None and summary["final"]["perplexity"] is None
    assert summary["rounds"] == 4 and summary["wall_s"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["throughput"]["samples_per_s"] > 0 and summary["simulated"] is True
    assert (
        (out / "config.yaml").is_file() and (out / "loss.png").is_file() and (out / "accuracy.png").is_file()
    )
    assert load_config(out / "config.yaml").distributed.num_nodes == 4  # the resolved config reloads


def test_same_seed_same_metrics() -> None:
    a = run_experiment(_cfg(seed=3), write=False).history
    b = run_experiment(_cfg(seed=3), write=False).history
    c = run_experiment(_cfg(seed=4), write=False).history
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run_experiment(_cfg(), out_dir=out)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(_cfg(), out_dir=out)
    code = main(["run", "--quiet", "--out", str(out), "--set", "training.max_rounds=2"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_facade_trains_and_exposes_components() -> None:
    trainer = DistributedTrainer(
        model_name="cnn", num_nodes=4, trust_threshold=0.7, overrides=["output.progress=false"]
    )
    result = trainer.train(dataset="digits", epochs=1, max_rounds=3, write=False)
    assert len(result.history) == 3 and result.summary["num_nodes"] == 4
    assert trainer.trust_manager is not None and trainer.attacker is not None
    with pytest.raises(TypeError, match="valid"):
        DistributedTrainer(num_nodez=3)
    with pytest.raises(ConfigError):
        DistributedTrainer(num_nodes=0)


def test_gpt2_tiny_run_reports_perplexity() -> None:
    cfg = config_from_dict(
        {
            "model": {"name": "gpt2", "size": "tiny"},
            "data": {"name": "text", "block_size": 16, "max_train_samples": 256, "max_test_samples": 32},
            "training": {"batch_size": 2, "max_rounds": 3, "optimizer": "adamw", "learning_rate": 1e-3},
            "distributed": {"num_nodes": 2},
            "output": {"progress": False, "plots": False},
        }
    )
    res = run_experiment(cfg, write=False)
    ppl = res.summary["final"]["perplexity"]
    assert ppl is not None and 1 < ppl < 1000


def test_pipeline_under_torchrun_backend_is_a_clear_error() -> None:
    cfg = _cfg(
        distributed={
            "parallelism": "hybrid",
            "backend": "torch",
            "num_nodes": 4,
            "replicas": 2,
            "num_stages": 2,
        },
        security={"gradient_verification": True},
    )
    with pytest.raises(ConfigError, match="a defended hybrid layout"):
        run_experiment(cfg, write=False)
    cfg = _cfg(
        distributed={"parallelism": "model", "backend": "torch"}, security={"gradient_verification": True}
    )
    with pytest.raises(ConfigError, match="needs one process per rank"):
        run_experiment(cfg, write=False)


def _cli_run(prefix: list[str], out: Path, overrides: list[str]) -> None:
    """Run ``<prefix> -m trustworthy_dl run quickstart`` in a subprocess, one thread per process."""
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, *prefix, "-m", "trustworthy_dl", "run", "configs/quickstart.yaml", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [*cmd, "--out", str(out), *sets], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.distributed
def test_torchrun_matches_simulated(tmp_path: Path) -> None:
    """Two processes over gloo on loopback give the simulated run's per-round losses."""
    overrides = ["training.max_rounds=5", "training.batch_size=8", "output.plots=false"]
    _cli_run([], tmp_path / "sim", overrides)
    _cli_run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path / "dist", overrides
    )
    a, b = _losses(tmp_path / "sim"), _losses(tmp_path / "dist")
    assert len(a) == len(b) == 5
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    dist = json.loads((tmp_path / "dist" / "summary.json").read_text())
    sim = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert dist["backend"] == "torch.distributed/gloo" and dist["processes"] == 2
    assert sim["backend"] == "simulated" and sim["simulated"] is True
    assert dist["final"]["test_accuracy"] == pytest.approx(sim["final"]["test_accuracy"], abs=1e-6)


@pytest.mark.distributed
def test_torchrun_defence_quarantines_the_byzantine_nodes(tmp_path: Path) -> None:
    """Under torchrun the coordinator gathers rows, verifies, quarantines; parameter digests travel as tensors."""
    overrides = [
        "training.max_rounds=6",
        "training.batch_size=8",
        "output.plots=false",
        "attack.name=sign_flip",
        "attack.num_byzantine=2",
        "security.attack_detection=true",
        "security.gradient_verification=true",
        "aggregation.name=median",
    ]
    _cli_run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], tmp_path / "d", overrides
    )
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["trust"]["quarantined"] == summary["byzantine_ids"]
    assert summary["detection"]["latency_rounds_max"] <= 3 and summary["detection"]["fp"] == 0


@pytest.mark.distributed
def test_torchrun_resume_from_a_checkpoint(tmp_path: Path) -> None:
    """Every rank reads the checkpoint; the resumed rounds equal the uninterrupted run's."""
    import shutil

    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    overrides = [
        "training.max_rounds=6",
        "training.batch_size=8",
        "output.plots=false",
        "output.checkpoint_every=2",
    ]
    _cli_run(torchrun, tmp_path / "full", overrides)
    cut = tmp_path / "cut"  # as if the run had died after its last checkpoint (before round 4)
    shutil.copytree(tmp_path / "full", cut)
    (cut / "summary.json").unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, *torchrun, "-m", "trustworthy_dl", "run", "--resume", str(cut), "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(cut) == _losses(tmp_path / "full")
    assert len((cut / "metrics.interrupted-1.jsonl").read_text().splitlines()) == 6
