"""Faults in one process: the schedule, absent nodes in trust / detection, a simulated run with
crashes, silences and stragglers, and the node-side attack with the coalition's view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trustworthy_dl.attacks import AdversarialAttacker
from trustworthy_dl.config import AttackConfig, FaultConfig, load_config
from trustworthy_dl.engine.faults import FaultSchedule
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models import get_model
from trustworthy_dl.report.weights import load_final_weights
from trustworthy_dl.security.detector import Stage1Detector
from trustworthy_dl.trust import TrustManager

# ---------------------------------------------------------------- the schedule


def test_schedule_spans_and_straggler_deadline() -> None:
    faults = (
        FaultConfig(kind="silent", node=1, round=2, rounds=2),
        FaultConfig(kind="crash", node=3, round=5),
        FaultConfig(kind="straggler", node=0, round=1, delay_s=3.5),
    )
    no_deadline = FaultSchedule(faults, None)
    assert [no_deadline.missing(1, r) for r in range(5)] == [False, False, True, True, False]
    assert [no_deadline.missing(3, r) for r in (4, 5, 500)] == [False, True, True]
    assert not no_deadline.missing(0, 1)  # no deadline: a straggler is only late
    deadline = FaultSchedule(faults, 1.0)
    # 3.5 s late against a 1 s deadline: rounds 1, 2, 3 pass without it
    assert [deadline.missing(0, r) for r in range(5)] == [False, True, True, True, False]
    assert deadline.cause(0, 2) == "straggler" and deadline.cause(2, 2) == "timeout"
    # under torchrun a straggler is not "absent" by its own account: it sends late
    assert not deadline.reports_absent(0, 1) and deadline.reports_absent(1, 2)


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("{kind: straggler, node: 1, round: 2}", "delay_s is for (and needed by) stragglers"),
        ("{kind: silent, node: 1, round: 2, delay_s: 1.0}", "delay_s is for"),
        ("{kind: crash, node: 9, round: 2}", "node 9 out of range"),
        ("{kind: reboot, node: 1, round: 2}", "faults.0.kind"),
    ],
)
def test_bad_faults_name_the_problem(fault: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [f"faults=[{fault}]"])
    assert needle in str(err.value)


def test_faults_in_pipelines_are_refused() -> None:
    with pytest.raises(ConfigError, match="data-parallel runs only"):
        load_config(
            None,
            ["distributed.parallelism=model", "model.name=cnn", "faults=[{kind: crash, node: 1, round: 2}]"],
        )


# ---------------------------------------------------------------- trust and detection


def test_absent_nodes_are_inactive_keep_their_score_and_come_back() -> None:
    tm = TrustManager(4)
    present = torch.tensor([True, False, True, True])
    gone, back = tm.set_presence(present)
    assert gone == [1] and back == []
    tm.update(torch.tensor([0.0, 0.0, 1.0, 0.0]), observed_N=present)
    assert tm.active_N.tolist() == [True, False, True, True]
    assert tm.quarantined_N.tolist() == [False] * 4  # absence is not quarantine
    assert float(tm.scores[1]) == pytest.approx(0.9)  # unobserved: score kept
    assert float(tm.weights_N()[1]) == 0.0
    gone, back = tm.set_presence(torch.ones(4, dtype=torch.bool))
    assert gone == [] and back == [1] and bool(tm.active_N[1])
    state = tm.state_dict()
    tm2 = TrustManager(4)
    tm2.load_state_dict(state)
    assert tm2.absent_N.tolist() == tm.absent_N.tolist()


def test_detector_ignores_missing_rows() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(8, 50, generator=g) * 0.1 + 1.0
    rows[2] = 0.0  # a missing row is zeros: it must not look like an outlier
    rows[5] = -10.0  # a real outlier
    present = torch.ones(8, dtype=torch.bool)
    present[2] = False
    det = Stage1Detector(methods=("distance",), combine="any")
    res = det.inspect(rows, present_N=present)
    assert not bool(res.flags_N[2]) and bool(res.flags_N[5])
    assert res.info["nonfinite"] == []


# ---------------------------------------------------------------- node-side attacks


def _attacker(name: str, ids: list[int], **kw: object) -> AdversarialAttacker:
    return AdversarialAttacker(AttackConfig(name=name, byzantine_ids=ids, **kw), num_nodes=6, seed=3)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("sign_flip", {}), ("gaussian", {"collude": False}), ("alie", {}), ("ipm", {})],
)
def test_node_side_attack_per_block_equals_the_coordinator_form(name: str, kw: dict) -> None:
    """Three 'processes' of two nodes each attack their own rows from the exchanged view; the rows
    equal the one-place form; an honest node on a Byzantine node's block is untouched."""
    att = _attacker(name, [1, 4], **kw)
    rows = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    whole = att.corrupt(rows, round=0)
    assert not torch.equal(whole[[1, 4]], rows[[1, 4]])  # the attack did something
    for lo in (0, 2, 4):
        block = rows[lo : lo + 2].clone()
        need = att.needs_view(0)
        if need == "all":
            view, ids = rows, list(range(6))
        elif need == "byzantine":
            view, ids = rows[[1, 4]], [1, 4]
        else:
            view, ids = None, []
        att.corrupt_local(block, local_nodes=range(lo, lo + 2), view_KD=view, view_ids=ids, round=0)
        torch.testing.assert_close(block, whole[lo : lo + 2])
    torch.testing.assert_close(whole[[0, 2, 3, 5]], rows[[0, 2, 3, 5]])


def test_colluders_knowledge_uses_only_their_own_rows() -> None:
    rows = torch.randn(6, 20, generator=torch.Generator().manual_seed(2))
    full = _attacker("alie", [1, 4], params={"z": 1.0}).corrupt(rows, round=0)
    coll = _attacker("alie", [1, 4], params={"z": 1.0}, knowledge="colluders").corrupt(rows, round=0)
    own = rows[[1, 4]]
    expected = own.mean(0) - 1.0 * own.std(0, correction=0)
    torch.testing.assert_close(coll[1], expected)
    torch.testing.assert_close(coll[4], expected)
    honest = rows[[0, 2, 3, 5]]
    torch.testing.assert_close(full[1], honest.mean(0) - honest.std(0, correction=0))
    with pytest.raises(RuntimeError, match="needs the coalition's view"):
        _attacker("alie", [1, 4], knowledge="colluders").corrupt_local(
            rows[:2].clone(), local_nodes=range(2), view_KD=None, view_ids=[], round=0
        )


# ---------------------------------------------------------------- a simulated run


@pytest.mark.slow
def test_simulated_faults_do_not_stop_training(tmp_path: Path) -> None:
    cfg = load_config(
        "configs/quickstart.yaml",
        [
            "training.max_rounds=10",
            "training.batch_size=8",
            "output.plots=false",
            "output.progress=false",
            "distributed.round_timeout_s=1.0",
            "security.attack_detection=true",
            "security.gradient_verification=true",
            "faults=[{kind: silent, node: 3, round: 2, rounds: 2}, {kind: crash, node: 5, round: 6},"
            " {kind: straggler, node: 1, round: 4, delay_s: 0.5}]",
        ],
    )
    result = run_experiment(cfg, out_dir=tmp_path / "run")
    recs = result.history
    absent = [r.get("faults", {}).get("absent") for r in recs]
    assert absent == [None, None, [3], [3], None, None, [5], [5], [5], [5]]  # 0.5 s late < 1 s: on time
    assert recs[2]["num_active"] == 7 and recs[4]["num_active"] == 8
    moved = [(m["shard"], m["from_node"], m["reason"]) for r in recs for m in r.get("reassignments", [])]
    assert (3, 3, "inactive") in moved and (3, 0, "return") in moved and (5, 5, "inactive") in moved
    s = result.summary
    assert s["detection"]["fp"] == 0 and s["trust"]["quarantined"] == []  # absence is not Byzantine
    outages = {o["node"]: o for o in s["faults"]["outages"]}
    assert outages[3]["back_round"] == 4 and outages[3]["rounds_missing"] == 2
    assert outages[5]["back_round"] is None and outages[5]["cause"] == "crash"
    # the run's trained weights are written, and load into a fresh model
    model = get_model("cnn", num_classes=10, in_channels=1, image_size=8, norm="group")
    model.load_state_dict(load_final_weights(tmp_path / "run" / "model.safetensors"))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["weights"] == "model.safetensors"


def test_a_group_stopped_before_the_dead_rank_was_named_is_still_reported(tmp_path: Path) -> None:
    import os
    import signal

    from trustworthy_dl.engine.fault_log import FaultLog
    from trustworthy_dl.engine.faults import LauncherStop, stop_on_sigterm

    restore = stop_on_sigterm()
    try:
        with pytest.raises(LauncherStop, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        restore()
    log = FaultLog(FaultSchedule(), tmp_path)
    log.append({"event": "group_stopped", "round": 7, "attempt": 0, "reason": "SIGTERM"})
    log.append({"event": "resumed", "attempt": 1, "from_round": 6, "rounds_rerun": 1})
    s = log.summary()
    assert s is not None
    (failure,) = s["rank_failures"]
    assert failure["round"] == 7 and failure["rank"] is None and s["rounds_rerun"] == 1
