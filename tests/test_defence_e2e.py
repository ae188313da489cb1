"""End-to-end defence on tiny data: detection finds the Byzantine nodes, trust quarantines them,
their shards move to trusted nodes, the metrics say so, and a clean run quarantines no one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustworthy_dl.cli import main
from trustworthy_dl.config import config_from_dict
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.sweep import parse_grid
from trustworthy_dl.errors import ConfigError


def _cfg(attack_name: str, *, rounds: int = 12, partition: str = "iid", **extra):  # type: ignore[no-untyped-def]
    data = {
        "data": {"name": "digits", "partition": partition},
        "training": {"batch_size": 16, "max_rounds": rounds},
        "distributed": {"num_nodes": 8},
        "attack": {
            "name": attack_name,
            "num_byzantine": 2 if attack_name != "none" else 0,
            "byzantine_ids": None,
        },
        "aggregation": {"name": "median"},
        "security": {"attack_detection": True, "gradient_verification": True},
        "output": {"progress": False, "plots": False},
    }
    for k, v in extra.items():
        data.setdefault(k, {}).update(v)
    return config_from_dict(data)


@pytest.mark.parametrize(
    ("attack", "max_latency"), [("sign_flip", 3), ("gaussian", 3), ("alie", 3), ("label_flip", 15)]
)
def test_byzantine_nodes_are_quarantined_quickly(attack: str, max_latency: int) -> None:
    """Non-stealthy attacks within 3 rounds; label flipping is subtler (found by spot checks)."""
    res = run_experiment(_cfg(attack, rounds=20), write=False)
    det, byz = res.summary["detection"], res.summary["byzantine_ids"]
    assert len(byz) == 2
    assert det["detected"] == 2 and det["undetected"] == 0
    assert det["latency_rounds_max"] <= max_latency
    assert det["fpr"] == 0.0 and det["false_quarantines"] == 0
    assert sorted(res.history[-1]["quarantined"]) == byz
    assert res.summary["trust"]["quarantined"] == byz
    # every shard is still trained on: the quarantined nodes' shards moved to trusted nodes
    moved = {e["shard"] for e in res.summary["reassignment"]["first"] if e["reason"] == "inactive"}
    assert moved == set(byz)
    assert res.summary["detection"]["verification"]["recomputations"] > 0


def test_clean_run_quarantines_nobody() -> None:
    for partition in ("iid", "dirichlet"):
        res = run_experiment(_cfg("none", rounds=20, partition=partition), write=False)
        det = res.summary["detection"]
        assert det["fp"] == 0 and det["false_quarantines"] == 0, partition
        assert det["tpr"] is None  # no Byzantine node: no made-up number
        assert all(r["num_active"] == 8 for r in res.history)


def test_verification_alone_catches_a_quiet_attacker() -> None:
    """With stage 1 off, spot checks + watching find an ALIE node by re-computation."""
    cfg = _cfg("alie", rounds=40, security={"attack_detection": False, "spot_check_fraction": 0.25})
    res = run_experiment(cfg, write=False)
    assert res.summary["detection"]["detected"] == 2


def test_security_records_and_plots(tmp_path: Path) -> None:
    cfg = _cfg("sign_flip", rounds=6, output={"plots": True})
    run_experiment(cfg, out_dir=tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[3])
    assert {"trust", "quarantined", "security", "num_active"} <= set(rec)
    assert (tmp_path / "run" / "trust.png").is_file() and (tmp_path / "run" / "detection.png").is_file()


def test_sweep_grid_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_grid(["a.b=1,2", "c=x"]) == [(("a.b", "1"), ("c", "x")), (("a.b", "2"), ("c", "x"))]
    args = [
        "sweep",
        "--grid",
        "attack.name=none,sign_flip",
        "--set",
        "attack.num_byzantine=1",
        "--set",
        "training.max_rounds=3",
        "--set",
        "training.batch_size=8",
        "--set",
        "distributed.num_nodes=4",
        "--set",
        "security.attack_detection=true",
        "--out",
        str(tmp_path / "sw"),
        "--jobs",
        "2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| attack.name |" in out and "sign_flip" in out
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert main(args) == 0  # resumes: nothing left to run
    assert "2 already done" in capsys.readouterr().out
    # an interrupted point (metrics but no summary) is run again; its old files are kept aside
    point = tmp_path / "sw" / "name=sign_flip"
    (point / "summary.json").unlink()
    (point / "metrics.jsonl").write_text('{"round": 0, "partial": true}\n')
    (point / "faults.jsonl").write_text('{"event": "stale"}\n')  # the interrupted run's, not the new one's
    assert main(args) == 0
    assert "1 to run" in capsys.readouterr().out
    assert (point / "interrupted-1" / "metrics.jsonl").read_text() == '{"round": 0, "partial": true}\n'
    assert (point / "interrupted-1" / "faults.jsonl").is_file() and not (point / "faults.jsonl").exists()
    assert (point / "summary.json").is_file()
    assert main(["sweep", "--grid", "attack.name=nosuch", "--out", str(tmp_path / "bad")]) == 2


def test_sweep_cases_axis_and_changed_config_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "flip4: {attack.name: sign_flip, attack.params.scale: 4}\n"
        "boost: {attack.name: scaling, attack.params.scale: 100}\n"
    )
    base = [
        "sweep",
        "--cases",
        str(cases),
        "--grid",
        "data.partition=iid",
        *("--set", "attack.num_byzantine=1", "--set", "training.max_rounds=2"),
        *("--set", "training.batch_size=8", "--set", "distributed.num_nodes=4"),
        "--out",
        str(tmp_path / "sw"),
    ]
    assert main(base) == 0
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(r["case"], r["attack.name"], r["attack.params.scale"]) for r in rows] == [
        ("flip4", "sign_flip", 4),
        ("boost", "scaling", 100),
    ]
    saved = (tmp_path / "sw" / "case=flip4-partition=iid" / "config.yaml").read_text()
    assert "scale: 4" in saved
    capsys.readouterr()
    # the same case name with another strength must not silently reuse the old run
    cases.write_text("flip4: {attack.name: sign_flip, attack.params.scale: 2}\n")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "different 'attack' section" in err and "case=flip4" in err
    # bad case files name the problem
    cases.write_text("- just a list\n")
    assert main(base) == 2
    assert "must hold a mapping of case names" in capsys.readouterr().err
    cases.write_text("flip4: {attack.name: sign_flip}\nx: {attack.name: nosuch}\n")
    assert main([*base[:3], "--grid", "case=nope", *base[3:]]) == 2
    assert "no case named ['nope']" in capsys.readouterr().err
    assert main(base) == 2
    assert "sweep point case=x" in capsys.readouterr().err
    # picking cases with --grid case=... skips the others (here the bad one)
    assert main([*base[:3], "--grid", "case=flip4", *base[3:-2], "--out", str(tmp_path / "sw2")]) == 0
    assert [r["case"] for r in json.loads((tmp_path / "sw2" / "sweep.json").read_text())] == ["flip4"]


def test_optimal_attack_probes_the_round_aggregation_without_disturbing_it() -> None:
    # optimal_ipm searches its epsilon against the run's (stateful) CenteredClip over the trusted
    # nodes; probing must leave the aggregator's state as it was, so two runs agree exactly.
    extra = {"aggregation": {"name": "centered_clip", "params": {"f": 2, "iterations": 3}}}
    a = run_experiment(_cfg("optimal_ipm", rounds=8, **extra), write=False)
    b = run_experiment(_cfg("optimal_ipm", rounds=8, **extra), write=False)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert [r["update_norm"] for r in a.history] == [r["update_norm"] for r in b.history]
    assert a.summary["detection"]["detected"] == 2


def test_trust_weighted_aggregation_uses_the_scores() -> None:
    # An intermittent attacker (every other round) loses trust when caught but is not quarantined
    # yet: in its clean rounds its row is aggregated with a smaller weight than the honest rows.
    extra = {"aggregation": {"name": "mean"}, "trust": {"weighted_aggregation": True}}
    res = run_experiment(_cfg("sign_flip", rounds=4, attack={"every": 2}, **extra), write=False)
    byz = res.summary["byzantine_ids"]
    rec = res.history[1]
    assert rec["num_aggregated"] == 8 and len(rec["weights"]) == 8
    w = rec["weights"]
    assert all(w[i] < w[j] for i in byz for j in range(8) if j not in byz)
    plain = run_experiment(
        _cfg("sign_flip", rounds=4, attack={"every": 2}, aggregation={"name": "mean"}), write=False
    )
    assert "weights" not in plain.history[1]
    assert res.history[1]["update_norm"] != plain.history[1]["update_norm"]
    with pytest.raises(ConfigError, match="honours weights"):
        _cfg("none", aggregation={"name": "median"}, trust={"weighted_aggregation": True})
