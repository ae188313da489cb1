"""Stage 2 (gradient verification), the verdict, the parameter monitor and detection metrics."""

from __future__ import annotations

import pytest
import torch

from trustworthy_dl.security import (
    DetectionTracker,
    GradientVerifier,
    ParameterMonitor,
    Stage1Detector,
    make_verdict,
    tensor_digest,
)
from trustworthy_dl.trust import TrustManager

N, D = 8, 100


def honest_updates(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed))


def bmask(n: int, *ids: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[list(ids)] = True
    return m


# ----------------------------------------------------------------------------- verification


def test_verify_confirms_tampered_and_clears_honest():
    truth = honest_updates()
    sent = truth.clone()
    sent[2] = -sent[2]  # tampered
    sent[5] += 1e-7 * sent[5].norm() / D**0.5  # float noise of a different device: within rtol
    sent[6, 0] = float("nan")
    v = GradientVerifier(rtol=1e-4)
    res = v.verify(sent, [2, 5, 6, 7], lambda i: truth[i])
    assert res.checked == [2, 5, 6, 7] and res.recomputations == 4
    assert res.mismatched == [2, 6] and res.cleared == [5, 7] and res.inconclusive == []
    assert res.rel_errors[2] == pytest.approx(2.0) and res.rel_errors[5] < 1e-6
    assert res.seconds >= 0
    assert v.watched == [2, 6]
    bad = v.verify(sent, [3], lambda i: torch.full((D,), float("nan")))
    assert bad.inconclusive == [3] and bad.mismatched == [] and bad.cleared == []


def test_select_flagged_probation_watched_and_spot_checks():
    v = GradientVerifier(spot_check_fraction=0.0, watch_rounds=2, warmup_rounds=0)
    flags = bmask(N, 1)
    active = ~bmask(N, 4)
    assert v.select(flags, active, 0) == [1, 4]
    assert v.last_selection == {1: "flagged", 4: "probation"}
    # node 3 fails a check: re-checked every round until 2 clean checks in a row
    truth = honest_updates()
    sent = truth.clone()
    sent[3] *= 2
    v.verify(sent, [3], lambda i: truth[i])
    assert v.select(bmask(N), ~bmask(N), 1) == [3]
    v.verify(truth, [3], lambda i: truth[i])
    assert v.select(bmask(N), ~bmask(N), 2) == [3]
    v.verify(truth, [3], lambda i: truth[i])
    assert v.select(bmask(N), ~bmask(N), 3) == []
    no_probation = GradientVerifier(spot_check_fraction=0.0, verify_quarantined=False, warmup_rounds=0)
    assert no_probation.select(flags, active, 0) == [1]


def test_select_suspects_by_stage1_score_within_the_budget():
    scores = torch.tensor([0.1, 0.7, 0.9, 0.6, 0.2, 0.55, 0.3, 2.0])
    flags = bmask(N, 7)
    everyone = torch.ones(N, dtype=torch.bool)
    # budget 2 / 7 of the pool of 7 unflagged nodes: exactly 2 extra checks, suspects first
    two = GradientVerifier(spot_check_fraction=2 / 7, warmup_rounds=0)
    assert two.select(flags, everyone, 0, scores_N=scores) == [1, 2, 7]
    assert two.last_selection == {1: "suspect", 2: "suspect", 7: "flagged"}
    # fewer suspects than the budget: the rest is drawn at random among the others
    one = GradientVerifier(spot_check_fraction=2 / 7, suspect_score=0.8, warmup_rounds=0)
    one.select(flags, everyone, 0, scores_N=scores)
    assert sorted(one.last_selection.values()) == ["flagged", "spot-check", "suspect"]
    assert one.last_selection[2] == "suspect"
    capped = GradientVerifier(spot_check_fraction=3 / 7, max_suspects=1, suspect_score=0.5, warmup_rounds=0)
    capped.select(flags, everyone, 0, scores_N=scores)
    assert (
        list(capped.last_selection.values()).count("suspect") == 1 and capped.last_selection[2] == "suspect"
    )
    assert list(capped.last_selection.values()).count("spot-check") == 2
    none = GradientVerifier(spot_check_fraction=0.0, warmup_rounds=0)  # no budget: no suspects
    assert none.select(flags, everyone, 0, scores_N=scores) == [7]


def test_spot_check_fraction_respected_and_seeded():
    n, rounds, frac = 20, 2000, 0.15
    v = GradientVerifier(spot_check_fraction=frac, seed=3, warmup_rounds=0)
    total = 0
    for r in range(rounds):
        picked = v.select(bmask(n), torch.ones(n, dtype=torch.bool), r)
        assert set(v.last_selection.values()) <= {"spot-check"}
        total += len(picked)
    assert total / (rounds * n) == pytest.approx(frac, abs=0.01)
    again = GradientVerifier(spot_check_fraction=frac, seed=3, warmup_rounds=0)
    assert again.select(bmask(n), torch.ones(n, dtype=torch.bool), 17) == v.select(
        bmask(n), torch.ones(n, dtype=torch.bool), 17
    )
    # only active, unflagged nodes are sampled; flagged ones are checked anyway
    all_ = GradientVerifier(spot_check_fraction=1.0, warmup_rounds=0)
    assert all_.select(bmask(4, 0), ~bmask(4, 1), 0) == [0, 1, 2, 3]


def test_warmup_rounds_check_everyone():
    v = GradientVerifier(spot_check_fraction=0.0, warmup_rounds=2)
    for r in (0, 1):
        assert v.select(bmask(N, 3), ~bmask(N, 5), r) == list(range(N))
    assert v.last_selection[3] == "flagged" and v.last_selection[5] == "probation"
    assert v.last_selection[0] == "warm-up"
    assert v.select(bmask(N, 3), torch.ones(N, dtype=torch.bool), 2) == [3]


def test_probation_backs_off_while_failing_and_resets_after_a_pass():
    v = GradientVerifier(spot_check_fraction=0.0, warmup_rounds=0, probation_max_interval=4)
    truth = honest_updates()
    bad = truth * 2
    quarantined = ~bmask(N, 4)
    checked = []
    for r in range(14):
        nodes = v.select(bmask(N, 4), quarantined, r)  # flagged every round: the schedule still decides
        if nodes:
            checked.append(r)
            v.verify(bad if r < 10 else truth, nodes, lambda i: truth[i])  # fails until round 10
    # waits 2, 4, 4 (capped) after each failed check; after the pass in round 10, every round
    assert checked == [0, 2, 6, 10, 11, 12, 13]
    w = GradientVerifier(probation_max_interval=4)
    w.load_state_dict(v.state_dict())
    assert w.state_dict() == v.state_dict()
    every = GradientVerifier(spot_check_fraction=0.0, warmup_rounds=0, probation_max_interval=1)
    for r in range(4):
        assert every.select(bmask(N), quarantined, r) == [4]
        every.verify(bad, [4], lambda i: truth[i])
    with pytest.raises(ValueError, match="probation_max_interval"):
        GradientVerifier(probation_max_interval=0)


def test_security_layer_freezes_trust_of_resting_quarantined_nodes():
    from trustworthy_dl.security.layer import SecurityLayer

    v = GradientVerifier(spot_check_fraction=0.0, warmup_rounds=0, probation_max_interval=8)
    layer = SecurityLayer(N, detector=None, verifier=v)
    truth = honest_updates()
    quarantined = ~bmask(N, 4)
    verdict, _ = layer.inspect(truth * 2, round=0, active_N=quarantined, recompute=lambda i: truth[i])
    assert verdict.observed_N is not None and verdict.observed_N.all()  # checked: seen
    verdict, rec = layer.inspect(truth * 2, round=1, active_N=quarantined, recompute=lambda i: truth[i])
    assert rec["recomputations"] == 0 and verdict.observed_N.tolist() == (~bmask(N, 4)).tolist()


def test_verifier_state_dict_and_validation():
    v = GradientVerifier()
    truth = honest_updates()
    v.verify(truth * 3, [0], lambda i: truth[i])
    w = GradientVerifier()
    w.load_state_dict(v.state_dict())
    assert w.watched == [0]
    with pytest.raises(ValueError, match="spot_check_fraction"):
        GradientVerifier(spot_check_fraction=1.5)


# ----------------------------------------------------------------------------- verdict


def test_verdict_verification_overrides_stage1():
    x = honest_updates()
    x[0] *= 50
    x[1] *= 50
    x[3, 0] = float("inf")
    s1 = Stage1Detector(methods=["distance"]).inspect(x)
    assert s1.flags_N[[0, 1, 3]].all()
    truth = honest_updates()
    truth[1] = x[1]  # node 1 really computed this (an honest outlier): verification clears it
    v = GradientVerifier(spot_check_fraction=0.0).verify(x, [0, 1, 6], lambda i: truth[i])
    verdict = make_verdict(N, stage1=s1, verification=v, tampered=[7])
    assert verdict.evidence_N.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert verdict.confirmed_N.nonzero().flatten().tolist() == [0, 3, 7]
    assert verdict.cleared_N.nonzero().flatten().tolist() == [1, 6]
    assert verdict.positive_N.nonzero().flatten().tolist() == [0, 3, 7]
    assert verdict.info["flagged"] == [0, 1, 3]
    assert verdict.aggregate_mask(~bmask(N, 5)).nonzero().flatten().tolist() == [1, 2, 4, 6]
    assert make_verdict(N).evidence_N.sum() == 0


# ----------------------------------------------------------------------------- monitor


def test_monitor_detects_single_flipped_bit():
    params = torch.randn(10_000)
    digests = [tensor_digest(params) for _ in range(4)]
    tampered = params.clone()
    tampered.view(torch.int32)[1234] ^= 1  # flip the lowest mantissa bit of one parameter
    digests[2] = tensor_digest(tampered)
    digests[3] = None  # a silent node is not evidence
    assert ParameterMonitor.check(params, digests) == [2]
    stacked = torch.stack([tensor_digest(params), tensor_digest(tampered)])
    assert stacked.shape == (2, 32) and stacked.dtype == torch.uint8
    assert ParameterMonitor.check(params, stacked) == [1]
    assert not torch.equal(tensor_digest(params), tensor_digest(params.double()))  # dtype is part of it
    assert tensor_digest(params.bfloat16()).shape == (32,)
    with pytest.raises(ValueError, match="expected 32"):
        ParameterMonitor.check(params, [torch.zeros(5, dtype=torch.uint8)])


def test_monitor_stats():
    p = torch.tensor([3.0, 4.0])
    assert ParameterMonitor.stats(p) == {"param_norm": 5.0, "finite": True}
    s = ParameterMonitor.stats(p, torch.tensor([3.0, 0.0]))
    assert s["drift"] == 4.0 and s["relative_drift"] == pytest.approx(4 / 3)
    assert ParameterMonitor.stats(torch.tensor([float("nan")]))["finite"] is False


# ----------------------------------------------------------------------------- metrics


def test_tracker_hand_made_sequence():
    # 4 nodes, node 3 Byzantine, attacks from round 2 on.
    t = DetectionTracker(4, [3], attack_active=lambda r: r >= 2)
    seq = [  # (flags, quarantined) per round
        ((), ()),
        ((1,), ()),  # honest node 1 flagged before the attack: flag FP
        ((3,), ()),  # attack starts: flagged, not yet quarantined
        ((3,), ()),
        ((3,), (3,)),  # quarantined at round 4: latency 2
        ((3, 0), (3, 0)),  # honest node 0 falsely quarantined
        ((3,), (3,)),
    ]
    for r, (fl, q) in enumerate(seq):
        t.record(r, flags_N=bmask(4, *fl), quarantined_N=bmask(4, *q), recomputations=2, verify_seconds=0.5)
    s = t.summary()
    # quarantine: positives = node 3 in rounds 2..6 (5 node-rounds); quarantined in 4, 5, 6
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (3, 2, 1, 22)
    assert s["tpr"] == pytest.approx(3 / 5) and s["fpr"] == pytest.approx(1 / 23)
    assert s["precision"] == pytest.approx(3 / 4)
    # flags: node 3 flagged in all 5 attack rounds; honest flags in rounds 1 and 5
    assert (s["flag_tp"], s["flag_fn"], s["flag_fp"], s["flag_tn"]) == (5, 0, 2, 21)
    assert s["flag_tpr"] == 1.0
    assert s["latency_rounds_median"] == 2 and s["latency_rounds_max"] == 2 and s["undetected"] == 0
    assert s["false_quarantines"] == 1 and s["false_quarantine_nodes"] == [0]
    assert s["verification"]["recomputations"] == 14 and s["verification"]["seconds_per_round"] == 0.5
    t2 = DetectionTracker(4, [3], attack_active=lambda r: r >= 2)
    t2.load_state_dict(t.state_dict())
    assert t2.summary() == s


def test_tracker_no_byzantine_and_undetected():
    t = DetectionTracker(3, [])
    for r in range(10):
        t.record(r, flags_N=bmask(3, 0) if r == 0 else bmask(3), quarantined_N=bmask(3))
    s = t.summary()
    assert s["tpr"] is None and s["fpr"] == 0.0 and s["precision"] is None
    assert s["flag_fpr"] == pytest.approx(1 / 30) and s["latency_rounds_median"] is None
    u = DetectionTracker(3, [1, 2])
    for r in range(5):
        u.record(r, flags_N=bmask(3), quarantined_N=bmask(3, 2) if r >= 1 else bmask(3))
    s = u.summary()
    assert s["detected"] == 1 and s["undetected"] == 1 and s["latency_rounds"] == {"1": None, "2": 1}
    assert s["latency_rounds_max"] == 1 and s["tpr"] == pytest.approx(4 / 10)


def test_end_to_end_round_loop_quarantines_attacker():
    """The pieces wired as the engine will: a scaling attacker is out at its third round."""
    n, f = 8, 2
    det, ver, tm = Stage1Detector(), GradientVerifier(spot_check_fraction=0.25), TrustManager(n)
    tracker = DetectionTracker(n, range(f))
    for r in range(6):
        g = torch.Generator().manual_seed(r)
        truth = torch.randn(n, 500, generator=g) + torch.randn(500, generator=g)
        sent = truth.clone()
        sent[:f] *= 20
        s1 = det.inspect(sent, generator=g)
        nodes = ver.select(s1.flags_N, tm.active_N, r)
        v = ver.verify(sent, nodes, lambda i, truth=truth: truth[i])
        verdict = make_verdict(n, stage1=s1, verification=v)
        tm.update(verdict.evidence_N)
        tracker.record(
            r, flags_N=verdict.positive_N, quarantined_N=tm.quarantined_N, stage1_flags_N=s1.flags_N
        )
    s = tracker.summary()
    assert s["latency_rounds_max"] == 2 and s["false_quarantines"] == 0 and s["fp"] == 0
    assert s["tp"] == 2 * 4 and s["stage1_tpr"] == 1.0
