"""Bad input found in review: detection parameters, an empty test set, an overwritten run's
leftovers, a deadline that a colluding attack's exchange cannot keep."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trustworthy_dl.cli import main

REPO = Path(__file__).resolve().parents[1]
DEFENDED = str(REPO / "configs" / "fmnist_defended.yaml")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ("{distance: {threshold: 5.0}}", "unexpected keyword argument 'threshold'"),
        ("{distance: {thresholds: {norm: -5}}}", "thresholds must be > 0"),
        ('{mandera: {with_krum: "no"}}', "mandera.with_krum='no': expected a bool"),
        ('{mandera: {alpha: "x"}}', "expected a float"),
    ],
)
def test_bad_detection_parameters_fail_at_load(
    capsys: pytest.CaptureFixture[str], params: str, needle: str
) -> None:
    code = main(["validate", DEFENDED, "--set", f"security.detection_params={params}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and needle in err, err


def test_good_detection_parameters_and_unknown_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["validate", DEFENDED, "--set", "security.detection_params={distance: {thresholds: {norm: 5}}}"])
        == 0
    )
    capsys.readouterr()
    assert main(["validate", DEFENDED, "--set", "security.detection_methods=[nope]"]) == 2
    assert "unknown detection method 'nope'" in capsys.readouterr().err


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_an_empty_test_set_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 0)):
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        )
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx(rng.integers(0, 10, (n,), dtype=np.uint8)))
        )
    out = tmp_path / "run"
    sets = [
        "data.name=mnist",
        f"data.root={tmp_path / 'data'}",
        "distributed.num_nodes=4",
        "training.max_rounds=2",
    ]
    code = main(["run", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and "test set is empty" in err and "Traceback" not in err, err
    assert not out.exists()


def test_overwrite_removes_the_earlier_runs_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "faults.jsonl",
        "checkpoint.pt",
        "metrics.interrupted-1.jsonl",
    ):
        (out / name).write_text("old\n")
    sets = ["training.max_rounds=2", "distributed.num_nodes=4", "output.overwrite=true", "output.plots=false"]
    assert main(["run", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    left = sorted(p.name for p in out.iterdir())
    assert (
        "faults.jsonl" not in left
        and "checkpoint.pt" not in left
        and "metrics.interrupted-1.jsonl" not in left
    )
    assert (out / "metrics.jsonl").read_text() != "old\n" and "summary.json" in left


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["attack.name=alie", "attack.num_byzantine=1"], "cannot bound under torchrun"),
        (["faults=[{kind: straggler, node: 2, round: 1, delay_s: 40}]"], "declared failed under torchrun"),
    ],
)
def test_what_a_deadline_cannot_bound_under_torchrun_is_a_config_error(
    tmp_path: Path, extra: list[str], needle: str
) -> None:
    sets = ["distributed.num_nodes=4", "training.max_rounds=2", "distributed.round_timeout_s=1.0", *extra]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--max-restarts", "0", "-m", "trustworthy_dl", "run", "--quiet", "--out", str(tmp_path / "run")]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr[-2000:]


def test_launch_refuses_what_every_rank_would_before_starting_torchrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["launch", "-n", "3", "--set", "distributed.num_nodes=2"]) == 2
    assert "every process needs at least one node" in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("seed: 0\n")  # an earlier, unfinished run
    assert main(["launch", "-n", "2", "--set", "distributed.num_nodes=4", "--out", str(old)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["launch", "-n", "2", "--resume", str(old)]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "needle"), [("[]", "holds a list"), ('{"trunc', "cannot read this run summary")]
)
def test_report_names_a_damaged_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    (tmp_path / "summary.json").write_text(text)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_a_damaged_or_incomplete_checkpoint_is_one_line_without_unsafe_advice(tmp_path: Path) -> None:
    import torch

    from trustworthy_dl.engine.checkpoint import FORMAT, load_checkpoint
    from trustworthy_dl.errors import ConfigError

    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ConfigError) as err:
        load_checkpoint(bad)
    assert (
        "cannot be read" in str(err.value)
        and "weights_only" not in str(err.value)
        and "\n" not in str(err.value)
    )
    part = tmp_path / "part.pt"
    torch.save({"format": FORMAT, "config": "{}", "next_round": 3}, part)
    with pytest.raises(ConfigError, match="is incomplete: it lacks buffers, loop, optimizer"):
        load_checkpoint(part)
