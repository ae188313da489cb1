"""Pipeline and hybrid parallelism: schedules, exactness against the unsplit model, message checks,
layout errors, and (slow) Byzantine stages detected, quarantined and migrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline_configs import gpt2_pipeline
from trustworthy_dl.config import config_from_dict, load_config
from trustworthy_dl.engine.pipeline_exec import HolderPlan, StageRunner, check_message
from trustworthy_dl.engine.pipeline_schedule import stage_actions, ticks
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.staged import StagedModel
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models import get_model

REPO = Path(__file__).resolve().parents[1]
VOCAB, BLOCK = 48, 12
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cli(prefix: list[str], config: Path, out: Path, *overrides: str) -> None:
    """``<prefix> -m trustworthy_dl run CONFIG`` in a subprocess, one thread per process."""
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [*prefix, "-m", "trustworthy_dl", "run", str(config), "--quiet", "--out", str(out), *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _sim_and_torchrun(
    tmp_path: Path, name: str, yaml_text: str, nproc: int
) -> tuple[Path, list[float], list[float]]:
    """Write the config, run it simulated (``sim``) and under torchrun with ``nproc`` ranks
    (``dist``); returns the config path and both runs' per-step losses."""
    cfg = tmp_path / name
    cfg.write_text(yaml_text)
    _cli([sys.executable], cfg, tmp_path / "sim")
    _cli([*TORCHRUN, "--nproc-per-node", str(nproc)], cfg, tmp_path / "dist")
    return cfg, _losses(tmp_path / "sim"), _losses(tmp_path / "dist")


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("stages", "micro"), [(1, 1), (2, 4), (4, 4), (4, 8), (3, 2)])
def test_schedules_run_every_action_once_in_the_bubble_bound(schedule: str, stages: int, micro: int) -> None:
    tick_list, stats = ticks(schedule, stages, micro)
    assert stats.ticks == 2 * (micro + stages - 1)  # both schedules have GPipe's bubble
    for s in range(stages):
        done = [a for t in tick_list for (st, a) in t if st == s]
        assert sorted(done) == sorted([("F", k) for k in range(micro)] + [("B", k) for k in range(micro)])
        assert [k for kind, k in done if kind == "B"] == list(range(micro))  # same accumulation order
    if schedule == "1f1b":
        assert stats.peak_stash <= min(stages, micro)
    else:
        assert stats.peak_stash == micro


def test_unknown_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gpipe or 1f1b"):
        stage_actions("zigzag", 2, 2, 0)


# --------------------------------------------------------------------------- exactness


def _model_and_batch(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Task]:
    torch.manual_seed(0)
    if name == "gpt2":
        model = get_model("gpt2", size="tiny", vocab_size=VOCAB, block_size=BLOCK)
        x = torch.randint(0, VOCAB, (8, BLOCK))
        return model, x, torch.randint(0, VOCAB, (8, BLOCK)), Task("text")
    channels, side = (1, 28) if name == "cnn" else (3, 32)
    model = get_model(name, num_classes=10, in_channels=channels, image_size=side)
    return model, torch.randn(8, channels, side, side), torch.randint(0, 10, (8,)), Task("image")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("name", "stages"), [("gpt2", 4), ("resnet20", 4), ("vgg11", 3), ("cnn", 3)])
def test_pipeline_gradient_equals_the_unsplit_model(name: str, stages: int, schedule: str) -> None:
    model, x, y, task = _model_and_batch(name)
    named = dict(model.named_parameters())  # before the split unties GPT-2's embedding
    ref = dict(zip(named, torch.autograd.grad(task.loss(model(x), y), list(named.values()))))
    ref_loss = float(task.loss(model(x), y).detach())
    staged = StagedModel(model, stages)
    rows = [torch.empty(d) for d in staged.stage_sizes()]
    micro = list(zip(x.split(2), y.split(2)))
    out = StageRunner(staged, task).run_replica(micro, [HolderPlan()] * stages, rows, schedule=schedule)
    grad_D = torch.cat(rows)
    staged.sum_tied(grad_D)
    where = {}
    for s, flat in enumerate(staged.flats):
        off = staged.cols[s].start
        for p, k in zip(flat.params, flat.numels):
            where[id(p)] = slice(off, off + k)
            off += k
    for pname, p in named.items():
        torch.testing.assert_close(grad_D[where[id(p)]], ref[pname].reshape(-1), rtol=1e-4, atol=1e-6)
    assert out.loss == pytest.approx(ref_loss, rel=1e-5)
    if name == "gpt2":
        assert len(staged.ties) == 1  # the tied embedding: first and last stage hold equal copies
        t = staged.ties[0]
        assert torch.equal(grad_D[t.first], grad_D[t.second])


def test_both_schedules_give_bit_identical_gradients() -> None:
    rows = {}
    for schedule in ("gpipe", "1f1b"):
        model, x, y, task = _model_and_batch("resnet20")
        staged = StagedModel(model, 4)
        rows[schedule] = [torch.empty(d) for d in staged.stage_sizes()]
        micro = list(zip(x.split(2), y.split(2)))
        StageRunner(staged, task).run_replica(micro, [HolderPlan()] * 4, rows[schedule], schedule=schedule)
    assert all(torch.equal(a, b) for a, b in zip(rows["gpipe"], rows["1f1b"]))


# --------------------------------------------------------------------------- bad messages


def test_check_message_names_the_problem() -> None:
    like = torch.zeros(2, 3)
    assert check_message(None, like) == "nothing was sent"
    assert "shape" in str(check_message(torch.zeros(3, 2), like))
    assert "dtype" in str(check_message(torch.zeros(2, 3, dtype=torch.float64), like))
    assert "non-finite" in str(check_message(torch.full((2, 3), float("nan")), like))
    assert check_message(torch.ones(2, 3), like) is None


@pytest.mark.parametrize(
    "bad",
    [
        lambda t: t[:, :1],  # wrong shape
        lambda t: t.double(),  # wrong dtype
        lambda t: t * float("nan"),  # NaN
        lambda t: t * float("inf"),  # Inf
    ],
)
def test_a_bad_activation_is_rejected_and_replaced_never_crashes(bad) -> None:  # type: ignore[no-untyped-def]
    model, x, y, task = _model_and_batch("cnn")
    staged = StagedModel(model, 3)
    runner = StageRunner(staged, task)
    micro = list(zip(x.split(4), y.split(4)))
    honest = [torch.empty(d) for d in staged.stage_sizes()]
    runner.run_replica(micro, [HolderPlan()] * 3, honest, schedule="1f1b")
    rows = [torch.empty(d) for d in staged.stage_sizes()]
    plans = [HolderPlan(), HolderPlan(activation=bad), HolderPlan()]
    out = runner.run_replica(micro, plans, rows, schedule="1f1b")
    assert [(s, k) for s, k, _ in out.rejected] == [(1, 0), (1, 1)]  # the sender is blamed
    # the verifier's re-computation stood in: every stage computed what an honest pipeline computes
    assert all(torch.allclose(a, b) for a, b in zip(rows, honest))


# --------------------------------------------------------------------------- layouts


def _pipe(**distributed: object) -> dict:
    return {"model": {"name": "cnn"}, "distributed": {"parallelism": "model", **distributed}}


def test_layout_arithmetic_mismatch_shows_the_numbers() -> None:
    with pytest.raises(
        ConfigError, match=r"num_nodes=8 must equal replicas x num_stages \+ spares = 2 x 3 \+ 1 = 7"
    ):
        config_from_dict(_pipe(num_nodes=8, parallelism="hybrid", num_stages=3, replicas=2, spares=1))


@pytest.mark.parametrize(
    ("distributed", "message"),
    [
        ({"num_nodes": 4, "replicas": 2}, "replicas must be 1"),
        ({"num_nodes": 3, "parallelism": "hybrid", "num_stages": 2}, "hybrid needs replicas >= 2"),
        ({"num_nodes": 4, "spares": 4}, "leaves no node"),
        ({"num_nodes": 4, "parallelism": "data", "num_stages": 2}, "parallelism=data takes no"),
    ],
)
def test_impossible_layouts_are_config_errors(distributed: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_pipe(**distributed))


def test_more_stages_than_blocks_is_a_config_error() -> None:
    cfg = config_from_dict(_pipe(num_nodes=4, num_stages=4) | {"output": {"progress": False, "plots": False}})
    with pytest.raises(ConfigError, match="exceeds the 3 blocks of cnn"):
        run_experiment(cfg, write=False)


def test_settings_that_do_not_apply_to_pipelines_are_errors() -> None:
    cfg = config_from_dict(_pipe(num_nodes=3, per_node_grads="vmap") | {"output": {"progress": False}})
    with pytest.raises(ConfigError, match="applies to data parallelism"):
        run_experiment(cfg, write=False)
    cfg = config_from_dict(
        _pipe(num_nodes=3)
        | {"attack": {"name": "label_flip", "num_byzantine": 1}, "output": {"progress": False}}
    )
    with pytest.raises(ConfigError, match="is a data attack"):
        run_experiment(cfg, write=False)
    for attack, match in (
        ({"name": "sign_flip", "num_byzantine": 1}, "this pipeline has one replica"),  # no update to corrupt
        ({"name": "activation_tamper", "byzantine_ids": [2]}, "the last stage sends no activations"),
        ({"name": "gradient_tamper", "byzantine_ids": [0]}, "stage 0 sends no activation-gradients"),
    ):
        cfg = config_from_dict(_pipe(num_nodes=3) | {"attack": attack, "output": {"progress": False}})
        with pytest.raises(ConfigError, match=match):
            run_experiment(cfg, write=False)


def test_pipeline_attacks_need_a_pipeline() -> None:
    with pytest.raises(ConfigError, match=r"needs distributed\.parallelism=model or hybrid"):
        config_from_dict({"attack": {"name": "gradient_tamper", "num_byzantine": 1}})


def test_also_attacks_need_explicit_ids() -> None:
    with pytest.raises(ConfigError, match="give its nodes as byzantine_ids"):
        config_from_dict(
            _pipe(num_nodes=7, parallelism="hybrid", num_stages=3, spares=1)
            | {"attack": {"name": "activation_tamper", "byzantine_ids": [1], "also": [{"name": "alie"}]}}
        )


def test_seed_config_derives_its_stages_and_spares() -> None:
    cfg = load_config(REPO / "configs" / "gpt2_distributed.yaml", ["model.size=tiny"])
    assert cfg.distributed.layout_numbers(max_stages=4) == (1, 4, 4)  # tiny GPT-2 has 4 blocks
    assert cfg.distributed.layout_numbers() == (1, 8, 0)


# --------------------------------------------------------------------------- end to end (slow)


def _run(tmp_path: Path, name: str, **sections: dict) -> dict:
    return run_experiment(config_from_dict(gpt2_pipeline(**sections)), out_dir=tmp_path / name).summary


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "node"), [("activation_tamper", 1), ("gradient_tamper", 2), ("parameter_tamper", 1)]
)
def test_byzantine_stage_is_quarantined_and_migrated_to_the_spare(
    tmp_path: Path, attack: str, node: int
) -> None:
    s = _run(tmp_path, attack, attack={"name": attack, "byzantine_ids": [node], "start_round": 6})
    det = s["detection"]
    assert det["latency_rounds"][str(node)] is not None and det["latency_rounds"][str(node)] <= 5
    assert det["false_quarantines"] == 0 and det["fpr"] == 0.0
    ev = s["migrations"]["events"]
    assert [(e["from"], e["to"], e["stage"], e["to_spare"]) for e in ev] == [(node, 4, node, True)]
    assert ev[0]["restored_from_round"] is not None and ev[0]["restored_from_round"] < 6
    assert ev[0]["bytes"] > 0
    assert s["final"]["perplexity"] is not None and s["final"]["perplexity"] < 60
    records = [json.loads(line) for line in (tmp_path / attack / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["holders"][node] == 4  # the stage now lives on the spare
    assert (tmp_path / attack / "pipeline_loss.png").is_file() and (tmp_path / attack / "trust.png").is_file()


@pytest.mark.slow
def test_clean_pipeline_has_no_false_positive_and_matches_across_schedules(tmp_path: Path) -> None:
    short = {"batch_size": 8, "max_rounds": 8}
    a = _run(tmp_path, "gpipe", distributed={"schedule": "gpipe", "micro_batches": 8}, training=short)
    b = _run(tmp_path, "1f1b", distributed={"schedule": "1f1b", "micro_batches": 8}, training=short)
    assert a["detection"]["fpr"] == 0.0 and a["migrations"]["count"] == 0
    assert _losses(tmp_path / "gpipe") == _losses(
        tmp_path / "1f1b"
    )  # the schedules accumulate in the same order: identical runs
    assert b["pipeline"]["peak_stashed_micro_batches"] < a["pipeline"]["peak_stashed_micro_batches"]


@pytest.mark.slow
def test_hybrid_update_attack_and_tampered_stage_are_both_caught(tmp_path: Path) -> None:
    s = _run(
        tmp_path,
        "hybrid",
        model={"name": "cnn", "size": None},
        data={"name": "digits"},
        training={"batch_size": 16, "max_rounds": 25, "optimizer": "sgd", "learning_rate": 0.05},
        distributed={"num_nodes": 7, "parallelism": "hybrid", "num_stages": 3, "replicas": 2, "spares": 1},
        attack={
            "name": "activation_tamper",
            "byzantine_ids": [1],
            "start_round": 5,
            "also": [{"name": "sign_flip", "byzantine_ids": [5], "start_round": 5, "params": {"scale": 4.0}}],
        },
    )
    det = s["detection"]
    assert set(det["latency_rounds"]) == {"1", "5"} and all(
        v is not None for v in det["latency_rounds"].values()
    )
    assert det["false_quarantines"] == 0
    assert {e["from"] for e in s["migrations"]["events"]} == {1, 5}
    assert s["pipeline"]["replicas"] == 2 and s["pipeline"]["stages"] == 3


@pytest.mark.slow
def test_seed_pipeline_config_runs_with_tiny_gpt2(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs" / "gpt2_distributed.yaml",
        [
            "model.size=tiny",
            "data.name=text",
            "data.block_size=16",
            "data.max_train_samples=256",
            "training.max_rounds=3",
            "training.batch_size=8",
            "output.progress=false",
            "output.plots=false",
        ],
    )
    res = run_experiment(cfg, write=False)
    assert res.summary["pipeline"]["stages"] == 4 and res.summary["pipeline"]["spares"] == 4
    assert res.summary["final"]["perplexity"] is not None


# --------------------------------------------------------------------------- torchrun seam


@pytest.mark.distributed
@pytest.mark.parametrize("attack", ["none", "activation_tamper"])
def test_two_stage_pipeline_under_torchrun_matches_the_simulated_one(tmp_path: Path, attack: str) -> None:
    """Stage 0 on rank 0, stage 1 on rank 1: activations and activation-gradients cross the process
    boundary by send/recv (gloo, loopback); a Byzantine stage tampers inside its own process."""
    cfg, sim, dist = _sim_and_torchrun(
        tmp_path,
        "pipe.yaml",
        "seed: 0\nmodel: {name: cnn}\ndata: {name: digits}\n"
        "training: {batch_size: 16, max_rounds: 6, learning_rate: 0.05, eval_every: 3}\n"
        "distributed: {num_nodes: 2, parallelism: model, num_stages: 2, micro_batches: 4, schedule: 1f1b}\n"
        f"attack: {{name: {attack}, byzantine_ids: [0], start_round: 2}}\n"
        "output: {progress: false, plots: false}\n",
        2,
    )
    assert len(dist) == 6
    assert dist == pytest.approx(sim, rel=1e-5, abs=1e-6)
    summary = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert summary["backend"] == "torch.distributed/gloo" and summary["processes"] == 2
    if attack != "none":  # the tampering happened (inside rank 0): the run left the clean trajectory
        _cli([sys.executable], cfg, tmp_path / "clean", "attack.name=none")
        clean = _losses(tmp_path / "clean")
        assert clean[:2] == pytest.approx(dist[:2])
        assert all(abs(a - b) > 1e-4 for a, b in zip(clean[3:], dist[3:]))


@pytest.mark.distributed
def test_defended_pipeline_across_five_processes_migrates_the_byzantine_stage_to_the_spare_rank(
    tmp_path: Path,
) -> None:
    """GPT-2 tiny as 4 stages on ranks 0-3 + a spare rank 4. From step 6 the holder of stage 1
    tampers with its activations inside its own process. The coordinator cross-validates sampled
    micro-batches from what the stage's neighbours report, quarantines node 1 and migrates stage 1
    to the spare rank (parameters and optimizer state from the last verified snapshot): every step
    equals the simulated run's."""
    _, sim, dist = _sim_and_torchrun(
        tmp_path,
        "pipe5.yaml",
        "seed: 0\nmodel: {name: gpt2, size: tiny}\n"
        "data: {name: text, block_size: 16, max_train_samples: 512, max_test_samples: 64}\n"
        "training: {batch_size: 8, max_rounds: 12, optimizer: adamw, learning_rate: 0.002, eval_every: 6}\n"
        "distributed: {num_nodes: 5, parallelism: model, num_stages: 4, spares: 1}\n"
        "security: {attack_detection: true, gradient_verification: true, pipeline_verify_rate: 0.25}\n"
        "trust: {snapshot_every: 5}\n"
        "attack: {name: activation_tamper, byzantine_ids: [1], start_round: 6}\n"
        "output: {progress: false, plots: false}\n",
        5,
    )
    assert dist == pytest.approx(sim, rel=1e-5, abs=1e-6)
    s = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert s["processes"] == 5 and s["trust"]["quarantined"] == [1]
    (ev,) = s["migrations"]["events"]
    assert (ev["from"], ev["to"], ev["stage"], ev["to_spare"]) == (1, 4, 1, True)
    assert ev["restored_from_round"] is not None and ev["restored_from_round"] < 6
    assert s["detection"]["false_quarantines"] == 0 and s["detection"]["latency_rounds"]["1"] <= 3
    records = [json.loads(x) for x in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["holders"] == [0, 4, 2, 3]  # stage 1 now runs in the spare's process


@pytest.mark.distributed
def test_hybrid_over_three_processes_matches_the_simulated_one(tmp_path: Path) -> None:
    """2 replicas x 3 stages + 1 spare on 3 ranks (nodes 0-2, 3-5, 6): stage rows are reduced over
    each stage's sub-group (its holders' ranks and the coordinator), the spare's rank holds nothing."""
    _, sim, dist = _sim_and_torchrun(
        tmp_path,
        "hybrid.yaml",
        "seed: 0\nmodel: {name: cnn}\ndata: {name: digits}\n"
        "training: {batch_size: 16, max_rounds: 4, learning_rate: 0.05, eval_every: 4}\n"
        "distributed: {num_nodes: 7, parallelism: hybrid, num_stages: 3, replicas: 2, spares: 1}\n"
        "output: {progress: false, plots: false}\n",
        3,
    )
    assert len(dist) == 4 and dist == pytest.approx(sim, rel=1e-5, abs=1e-6)


@pytest.mark.distributed
def test_an_undefended_multi_process_pipeline_shares_a_migration(tmp_path: Path) -> None:  # rejection => move
    _, sim, dist = _sim_and_torchrun(
        tmp_path,
        "undefended.yaml",
        "seed: 0\nmodel: {name: cnn}\ndata: {name: digits}\ntraining: {batch_size: 16, max_rounds: 6}\n"
        "distributed: {num_nodes: 3, parallelism: model, num_stages: 2, spares: 1, micro_batches: 2}\n"
        "attack: {name: gradient_tamper, byzantine_ids: [1], start_round: 1, params: {mode: constant, strength: .inf}}\n"
        "output: {progress: false, plots: false}\n",
        3,
    )
    assert len(dist) == 6 and dist == pytest.approx(sim, rel=1e-5, abs=1e-6)
    assert json.loads((tmp_path / "dist" / "summary.json").read_text())["migrations"]["count"] == 1


def test_stages_can_be_balanced_by_measured_block_time() -> None:
    from trustworthy_dl.models.stages import block_times, split_into_stages

    model, x, _, _ = _model_and_batch("resnet20")
    times = block_times(model, x[:2], reps=1)
    assert len(times) == len(list(model)) and all(t > 0 for t in times)
    # weights that make the last block cost as much as all the others: it gets a stage of its own
    weights = [1.0] * (len(times) - 1) + [float(len(times) - 1)]
    stages = split_into_stages(model, 2, block_weights=weights)
    assert len(stages[1]) == 1
    with pytest.raises(ConfigError, match="block weights"):
        split_into_stages(model, 2, block_weights=[1.0])


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True])
def test_hybrid_stage_groups_run_stage_one_statistics_and_verification(
    tmp_path: Path, weighted: bool
) -> None:
    """With 4 replicas each stage group has 4 rows: stage-1 statistics flag rows, the stage-2
    verifier re-computes the flagged ones and only the Byzantine holder is confirmed (also with
    each row weighted by its holder's trust)."""
    s = _run(
        tmp_path,
        "h4",
        model={"name": "cnn", "size": None},
        data={"name": "digits"},
        training={"batch_size": 16, "max_rounds": 14, "optimizer": "sgd", "learning_rate": 0.05},
        distributed={"num_nodes": 9, "parallelism": "hybrid", "num_stages": 2, "replicas": 4, "spares": 1},
        attack={"name": "gaussian", "byzantine_ids": [3], "start_round": 8},
        aggregation={"name": "mean" if weighted else "median"},
        security={"spot_check_fraction": 0.0},
        trust={"weighted_aggregation": weighted},
    )
    assert s["detection"]["latency_rounds"] == {"3": 2} and s["detection"]["false_quarantines"] == 0
    assert [(e["from"], e["to"]) for e in s["migrations"]["events"]] == [(3, 8)]
    records = [json.loads(x) for x in (tmp_path / "h4" / "metrics.jsonl").read_text().splitlines()]
    reasons = [r["stages"][1].get("verified", {}) for r in records[8:10]]
    assert all(
        v.get("1") == "flagged" for v in reasons
    )  # replica 1's stage-1 row (node 3), flagged by statistics


def test_launching_a_defended_hybrid_is_refused_before_any_process_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trustworthy_dl.cli import main

    assert main(["launch", "-n", "2", str(REPO / "configs" / "hybrid_fmnist.yaml")]) == 2
    assert "a defended hybrid layout (2 replicas)" in capsys.readouterr().err


def test_the_python_facade_takes_the_pipeline_layout() -> None:
    from trustworthy_dl import DistributedTrainer

    t = DistributedTrainer(
        model_name="cnn",
        num_nodes=7,
        parallelism="hybrid",
        num_stages=3,
        replicas=2,
        spares=1,
        schedule="gpipe",
    )
    assert t.config.distributed.layout_numbers() == (2, 3, 1) and t.config.distributed.schedule == "gpipe"
    with pytest.raises(ConfigError, match="must equal replicas x num_stages"):
        DistributedTrainer(model_name="cnn", num_nodes=8, parallelism="hybrid", num_stages=3, replicas=2)
