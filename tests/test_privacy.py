"""Node-side privacy: per-sample clipping, noise scale, replay, sparsification, the opacus
accountant's wiring, target epsilon, config errors and an exact resume of the accountant."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from trustworthy_dl.cli import main
from trustworthy_dl.config import config_from_dict
from trustworthy_dl.config_privacy import PrivacyConfig
from trustworthy_dl.engine.flat import FlatModel
from trustworthy_dl.engine.loop import RoundLoop
from trustworthy_dl.engine.run import run_experiment
from trustworthy_dl.engine.setup import check_supported
from trustworthy_dl.engine.task import Task
from trustworthy_dl.errors import ConfigError
from trustworthy_dl.models import get_model
from trustworthy_dl.privacy import NodePrivacy, PerSampleClipper, ShardAccountant, Sparsifier
from trustworthy_dl.report.metrics import read_metrics


def _model() -> FlatModel:
    torch.manual_seed(0)
    return FlatModel(get_model("mlp", num_classes=10, in_channels=1, image_size=8))


def _batch(b: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 1, 8, 8, generator=g) * 3, torch.randint(0, 10, (b,), generator=g)


def test_per_sample_gradients_match_autograd_and_clipping_bounds_every_norm() -> None:
    flat, task = _model(), Task("image")
    x, y = _batch()
    clipper = PerSampleClipper(flat, task, clip_norm=0.05, chunk=5)
    g_BD, _ = clipper.per_sample(x, y)
    for i in (0, 7):
        loss = task.loss(flat.model(x[i : i + 1]), y[i : i + 1])
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, flat.params)])
        torch.testing.assert_close(g_BD[i], ref, rtol=1e-4, atol=1e-6)
    norms = g_BD.norm(dim=1)
    assert (norms > 0.05).all()  # every sample is clipped at this C
    out = torch.empty(flat.num_params)
    _, frac = clipper.clipped_sum(x, y, out)
    assert frac == 1.0
    scaled = g_BD * (0.05 / norms).clamp(max=1).unsqueeze(1)
    assert (scaled.norm(dim=1) <= 0.05 * (1 + 1e-5)).all()
    torch.testing.assert_close(out, scaled.sum(0), rtol=1e-4, atol=1e-6)


def test_batchnorm_is_refused_for_dp_sgd() -> None:
    model = get_model("cnn", num_classes=10, in_channels=1, image_size=28, norm="batch")
    with pytest.raises(ConfigError, match="BatchNorm"):
        PerSampleClipper(FlatModel(model), Task("image"), clip_norm=1.0)


def _mech(**cfg: Any) -> NodePrivacy:
    pc = PrivacyConfig(enabled=True, **cfg)
    return NodePrivacy(pc, _model(), Task("image"), noise_multiplier=pc.noise_multiplier, seed=3)


def test_noise_has_the_configured_scale_and_is_replayed_exactly() -> None:
    x, y = _batch(16)
    noisy, clean = _mech(noise_multiplier=2.0, clip_norm=0.5), _mech(noise_multiplier=0.0, clip_norm=0.5)
    out_n, out_c = torch.empty(noisy.flat.num_params), torch.empty(clean.flat.num_params)
    noisy.update(4, 9, x, y, out_n)
    clean.update(4, 9, x, y, out_c)
    diff = out_n - out_c
    expected = 2.0 * 0.5 / 16  # sigma C / B
    d = diff.numel()
    assert d > 10_000
    assert abs(float(diff.std()) / expected - 1) < 4 * math.sqrt(1 / (2 * d))  # ~4 standard errors
    assert abs(float(diff.mean())) < 4 * expected / math.sqrt(d)
    torch.testing.assert_close(noisy.replay(4, 9, x, y), out_n)  # the verifier's replay
    other = torch.empty_like(out_n)
    noisy.update(5, 9, x, y, other)
    assert not torch.allclose(other, out_n)  # another node draws other noise


def test_node_clip_bounds_the_whole_update() -> None:
    x, y = _batch()
    m = _mech(mode="node_clip", noise_multiplier=0.0, clip_norm=0.01)
    out = torch.empty(m.flat.num_params)
    m.update(0, 0, x, y, out)
    assert float(out.norm()) == pytest.approx(0.01, rel=1e-5)
    assert m.noise_std(32) == 0.0


def test_topk_and_error_feedback_keep_what_was_dropped() -> None:
    sp = Sparsifier("topk", 0.1, error_feedback=True)
    row = torch.randn(100, generator=torch.Generator().manual_seed(0))
    orig = row.clone()
    sp.apply_(0, row)
    assert int((row != 0).sum()) == 10
    assert set(torch.nonzero(row).flatten().tolist()) == set(orig.abs().topk(10).indices.tolist())
    torch.testing.assert_close(row + sp.memory[0], orig)  # sent + remembered = the update
    nxt = torch.zeros(100)
    sp.apply_(0, nxt)  # the memory is sent next
    assert int((nxt != 0).sum()) == 10
    state = sp.state_dict()
    other = Sparsifier("topk", 0.1, error_feedback=True)
    other.load_state_dict(state, torch.device("cpu"))
    torch.testing.assert_close(other.memory[0], sp.memory[0])
    assert sp.bytes_per_update(1000) == 10 * 8 * 10  # k = 100 values + int32 indices


def test_randk_without_error_feedback_is_unbiased() -> None:
    sp = Sparsifier("randk", 0.25, error_feedback=False)
    v = torch.linspace(-1, 1, 40)
    acc = torch.zeros(40)
    for i in range(4000):
        row = v.clone()
        sp.apply_(0, row, torch.Generator().manual_seed(i))
        assert int((row != 0).sum()) == 10
        acc += row
    torch.testing.assert_close(acc / 4000, v, atol=0.12, rtol=0)


def test_accountant_matches_opacus_grows_with_rounds_falls_with_sigma() -> None:
    for kind, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = ShardAccountant([32 / 3750, 32 / 1000], 1.1, kind, 1e-5)
        eps = []
        for _ in range(3):
            for _ in range(50):
                acc.step(0)
                acc.step(1, 2)
            eps.append(acc.epsilon())
        assert eps[0] < eps[1] < eps[2]
        ref = cls()
        for _ in range(300):
            ref.step(noise_multiplier=1.1, sample_rate=32 / 1000)
        assert eps[2] == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-6)  # the worst shard
        assert acc.per_shard()[0] < acc.per_shard()[1]
    more = ShardAccountant([32 / 1000], 2.0, "rdp", 1e-5)
    less = ShardAccountant([32 / 1000], 1.0, "rdp", 1e-5)
    more.step(0, 100)
    less.step(0, 100)
    assert more.epsilon() < less.epsilon()
    assert ShardAccountant([0.1], 0.0, "rdp", 1e-5).epsilon() == 0.0  # no steps yet
    zero = ShardAccountant([0.1], 0.0, "rdp", 1e-5)
    zero.step(0)
    assert zero.epsilon() == math.inf


def _cfg(out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    data: dict[str, Any] = {
        "data": {"name": "digits"},
        "model": {"name": "mlp"},
        "training": {"batch_size": 16, "max_rounds": 10, "eval_every": 5},
        "distributed": {"num_nodes": 6},
        "privacy": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0},
        "output": {"dir": str(out), "progress": False, "plots": False},
    }
    for k, v in extra.items():
        data.setdefault(k, {}).update(v)
    return config_from_dict(data)


def test_privacy_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="error_feedback"):
        check_supported(
            _cfg(
                Path("x"),
                privacy={"sparsify": {"kind": "topk"}},
                security={"attack_detection": True, "gradient_verification": True},
            )
        )
    with pytest.raises(ConfigError, match="data parallelism"):
        check_supported(_cfg(Path("x"), distributed={"parallelism": "model", "num_nodes": 4}))
    with pytest.raises(ConfigError, match=r"sparsify\.kind"):
        _cfg(Path("x"), privacy={"sparsify": {"kind": "top"}})
    with pytest.raises(ConfigError, match="noise_multiplier"):
        _cfg(Path("x"), privacy={"noise_multiplier": -1.0})


def test_run_reports_epsilon_per_round_and_target_epsilon_is_met(tmp_path: Path) -> None:
    res = run_experiment(_cfg(tmp_path / "a", privacy={"target_epsilon": 4.0, "accountant": "rdp"}))
    eps = [r["privacy"]["epsilon"] for r in res.history]
    assert all(a < b for a, b in itertools.pairwise(eps))
    priv = res.summary["privacy"]
    assert priv["epsilon"] == pytest.approx(4.0, abs=0.05) and priv["epsilon"] <= 4.0 + 1e-6
    assert priv["noise_multiplier"] > 0 and priv["accountant"] == "rdp"
    assert priv["target_exceeded"] is False and priv["shards_over_target"] == []
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["privacy"]["epsilon"] == priv["epsilon"]


@pytest.mark.slow
def test_honest_private_nodes_pass_verification_and_sign_flippers_do_not(tmp_path: Path) -> None:
    res = run_experiment(
        _cfg(
            tmp_path / "v",
            attack={"name": "sign_flip", "num_byzantine": 1},
            security={"attack_detection": True, "gradient_verification": True},
            aggregation={"name": "median"},
            privacy={"sparsify": {"kind": "randk", "ratio": 0.25, "error_feedback": False}},
        )
    )
    det = res.summary["detection"]
    assert det["false_quarantines"] == 0 and det["tpr"] > 0.5
    assert res.summary["privacy"]["bytes_per_update"] < res.summary["privacy"]["dense_bytes_per_update"]


@pytest.mark.slow
def test_resume_restores_the_accountant_and_error_feedback_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {
        "privacy": {"sparsify": {"kind": "topk", "ratio": 0.2}},
        "output": {"checkpoint_every": 3},
    }
    full = run_experiment(_cfg(tmp_path / "full", **extra))
    original = RoundLoop._round

    def crashing(self: RoundLoop, r: int) -> dict[str, Any]:
        if r == 7:
            raise KeyboardInterrupt("simulated crash")
        return original(self, r)

    with monkeypatch.context() as m:
        m.setattr(RoundLoop, "_round", crashing)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_cfg(tmp_path / "cut", **extra))
    assert main(["run", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["privacy"] for r in cut] == [r["privacy"] for r in full.history]
    assert [r["loss"] for r in cut] == [r["loss"] for r in full.history]
    s_cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s_cut["privacy"] == full.summary["privacy"]
    assert s_cut["final"] == full.summary["final"]


@pytest.mark.slow
def test_a_byzantine_node_lying_in_wait_adds_noise_and_is_not_flagged_before_it_attacks(
    tmp_path: Path,
) -> None:
    res = run_experiment(
        _cfg(
            tmp_path / "w",
            attack={"name": "sign_flip", "num_byzantine": 1, "start_round": 6},
            security={"attack_detection": True, "gradient_verification": True},
            aggregation={"name": "median"},
        )
    )
    det = res.summary["detection"]
    assert det["attack_start"] == 6
    assert det["fp"] == 0 and det["stage1_fp"] <= 2  # before round 6 its noisy rows look honest
    assert det["detected"] == 1  # and it is caught once it attacks


def test_update_many_equals_one_node_at_a_time() -> None:
    m = _mech(noise_multiplier=0.7, clip_norm=0.3)
    m.clipper.chunk = 10  # type: ignore[union-attr]  # chunks straddle the nodes' batches
    g = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)) for b in (12, 7, 12)
    ]
    many = torch.empty(3, m.flat.num_params)
    losses = m.update_many([4, 0, 9], 2, batches, many)
    for i, (node, (x, y)) in enumerate(zip([4, 0, 9], batches)):
        one = torch.empty(m.flat.num_params)
        loss = m.update(node, 2, x, y, one)
        torch.testing.assert_close(many[i], one, rtol=1e-5, atol=1e-6)
        assert float(losses[i]) == pytest.approx(loss, rel=1e-5)
