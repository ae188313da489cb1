"""The aggregation API: registry, building, errors, composition, weights, state."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from trustworthy_dl.aggregation import (
    AggResult,
    aggregator_params,
    build_aggregator,
    get_aggregator,
    list_aggregators,
    list_pre_aggregators,
)
from trustworthy_dl.errors import ConfigError, NodeMessageError, UnknownNameError

REQUIRED = {
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "krum",
    "multi_krum",
    "bulyan",
    "centered_clip",
    "mda",
    "dnc",
    "signguard",
}


def X_(n: int = 9, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=g) + 0.3 * torch.randn(n, d, generator=g)


def test_registries_hold_the_required_rules() -> None:
    assert set(list_aggregators()) >= REQUIRED
    assert {"nnm", "bucketing", "clip", "arc"} <= set(list_pre_aggregators())


def test_every_module_docstring_cites_and_states_tolerance() -> None:
    import importlib

    for mod in ["median", "trimmed_mean", "geometric_median", "krum", "bulyan", "centered_clip",
                "mda", "dnc", "signguard", "nnm", "bucketing", "clipping"]:  # fmt: skip
        doc = importlib.import_module(f"trustworthy_dl.aggregation.{mod}").__doc__ or ""
        assert "tolerance" in doc.lower() and "rule" in doc.lower(), mod
        assert any(str(y) in doc for y in range(1937, 2030)), mod  # a dated citation


def test_unknown_names_and_params_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="krum"):
        get_aggregator("krun", f=1)
    with pytest.raises(UnknownNameError, match="nnm"):
        build_aggregator("mean", f=0, pre=[{"name": "nmm"}])
    with pytest.raises(ConfigError, match=r"no parameter 'tua'.*tau=1\.0"):
        get_aggregator("centered_clip", f=1, tua=3)
    with pytest.raises(ConfigError, match="no parameter 'q'"):
        build_aggregator("mean", f=0, pre=[{"name": "bucketing", "q": 2}])
    with pytest.raises(ConfigError, match="'name'"):
        build_aggregator("mean", f=0, pre=[{"s": 2}])


def test_bad_values_are_config_errors_showing_the_value() -> None:
    with pytest.raises(ConfigError, match=r"tau=-1\.0 must be > 0"):
        get_aggregator("centered_clip", f=1, tau=-1.0)
    with pytest.raises(ConfigError, match="iterations='3' must be a int"):
        get_aggregator("geometric_median", f=1, iterations="3")
    with pytest.raises(ConfigError, match="init='best'"):
        get_aggregator("centered_clip", f=1, init="best")
    with pytest.raises(ConfigError, match="f=-1"):
        get_aggregator("krum", f=-1)
    with pytest.raises(ConfigError, match=r"lower=3\.0 must be below upper"):
        get_aggregator("signguard", f=1, lower=3.0, upper=2.0)
    assert isinstance(get_aggregator("centered_clip", f=1, tau=2).aggregator.params["tau"], float)


def test_tolerance_errors_show_n_and_f() -> None:
    X = X_(9)
    with pytest.raises(ConfigError, match=r"krum cannot tolerate f=4 with n=9: needs 2f \+ 2 < n"):
        get_aggregator("krum", f=4)(X)
    with pytest.raises(ConfigError, match=r"bulyan cannot tolerate f=2 with n=9: needs n >= 4f \+ 3"):
        get_aggregator("bulyan", f=2)(X)
    with pytest.raises(ConfigError, match=r"median cannot tolerate f=5 with n=9: needs 2f < n"):
        get_aggregator("median", f=5)(X)
    agg = build_aggregator("krum", f=2, pre=[{"name": "bucketing", "s": 2}])
    with pytest.raises(ConfigError, match=r"f=2 with n=5 \(n counted after bucketing\(s=2\)\)"):
        agg(X)


def test_f_is_checked_at_call_time_and_can_be_overridden() -> None:
    agg = get_aggregator("krum", f=3)
    agg(X_(9))  # 2*3 + 2 < 9
    with pytest.raises(ConfigError, match="n=7"):
        agg(X_(7))  # two nodes quarantined
    agg(X_(7), f=2)  # the engine lowers f with them
    assert build_aggregator("krum", f=9, params={"f": 1}).f == 1  # params override f


def test_results_are_frozen_with_per_node_fields() -> None:
    X = X_(9)
    for name in list_aggregators():
        r = get_aggregator(name, f=1)(X)
        assert isinstance(r, AggResult)
        assert r.value_D.shape == (12,) and r.value_D.dtype == X.dtype
        assert r.weights_N.shape == (9,) and r.selected_N.shape == (9,) and r.selected_N.dtype == torch.bool
        json.dumps(r.info)  # goes into metrics.jsonl
        with pytest.raises(AttributeError):
            r.value_D = X[0]  # type: ignore[misc]


def test_pipelines_report_per_original_node() -> None:
    X = X_(12)
    for pre in (["nnm"], ["bucketing"], ["clip"], ["arc"], ["nnm", "bucketing"], ["arc", "nnm"]):
        agg = build_aggregator("multi_krum", f=1, pre=[{"name": p} for p in pre])
        r = agg(X)
        assert agg.name == "+".join([*pre, "multi_krum"])
        assert r.weights_N.shape == (12,) and r.selected_N.shape == (12,)
        torch.testing.assert_close(r.weights_N.float() @ X, r.value_D, atol=1e-5, rtol=1e-5)


def test_weights_are_honoured_and_validated() -> None:
    X = X_(5)
    w = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(get_aggregator("mean", f=0)(X, w).value_D, X[2])
    r = get_aggregator("multi_krum", f=1)(X, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert abs(float(r.weights_N.sum()) - 1) < 1e-9
    with pytest.raises(NodeMessageError, match="non-negative"):
        get_aggregator("mean", f=0)(X, -w)
    with pytest.raises(NodeMessageError, match="4 entries for 5 nodes"):
        get_aggregator("mean", f=0)(X, w[:4])


def test_inputs_are_validated() -> None:
    with pytest.raises(NodeMessageError, match=r"shape \(N, D\)"):
        get_aggregator("mean", f=0)(torch.zeros(5))
    with pytest.raises(NodeMessageError, match="floating point"):
        get_aggregator("mean", f=0)(torch.zeros(3, 4, dtype=torch.long))
    X64 = X_(9).double()
    for name in list_aggregators():
        assert get_aggregator(name, f=1)(X64).value_D.dtype == torch.float64


def test_the_input_is_never_modified() -> None:
    X = X_(9)
    X[0, 0] = float("nan")
    before = X.clone()
    for name in list_aggregators():
        get_aggregator(name, f=1)(X)
    for pre in list_pre_aggregators():
        build_aggregator("median", f=1, pre=[{"name": pre}])(X)
    assert torch.equal(X.isnan(), before.isnan()) and torch.equal(X.nan_to_num(), before.nan_to_num())


def test_centered_clip_state_round_trips() -> None:
    X1, X2 = X_(9, seed=1), X_(9, seed=2)
    a = get_aggregator("centered_clip", f=1, tau=0.5)
    a(X1)
    state = copy.deepcopy(a.state_dict())
    out_a = a(X2).value_D
    b = get_aggregator("centered_clip", f=1, tau=0.5)
    b.load_state_dict(state)
    torch.testing.assert_close(b(X2).value_D, out_a)
    assert state["aggregator"]["rounds"] == 1
    with pytest.raises(ConfigError, match="unknown keys"):
        b.load_state_dict({"aggregator": {"centre": None, "bogus": 1}, "pre": []})


@pytest.mark.parametrize("name,pre", [("dnc", []), ("signguard", []), ("median", ["bucketing"])])
def test_randomised_rules_replay_from_their_state(name: str, pre: list[str]) -> None:
    X = X_(12, d=40)
    agg = build_aggregator(name, f=1, pre=[{"name": p} for p in pre])
    state = copy.deepcopy(agg.state_dict())
    first = [agg(X).value_D for _ in range(3)]
    agg.load_state_dict(state)
    again = [agg(X).value_D for _ in range(3)]
    for u, v in zip(first, again):
        torch.testing.assert_close(u, v)
    agg2 = build_aggregator(name, f=1, pre=[{"name": p} for p in pre])
    torch.testing.assert_close(agg2(X).value_D, first[0])  # same seed, same round: same draw


def test_stateless_stages_reject_state() -> None:
    agg = get_aggregator("krum", f=1)
    assert agg.state_dict() == {"aggregator": {}, "pre": []}
    with pytest.raises(ConfigError, match="stateless"):
        agg.load_state_dict({"aggregator": {"x": 1}, "pre": []})


def test_aggregator_params_lists_defaults() -> None:
    assert aggregator_params("centered_clip")["tau"] == 1.0
    assert aggregator_params("bucketing", pre=True)["s"] == 2
    assert "f" not in aggregator_params("krum")


def test_too_many_bad_rows_is_best_effort_not_a_crash() -> None:
    X = X_(9)
    X[:6] = float("nan")  # beyond any tolerance: the finite rows decide
    for name in ["krum", "multi_krum", "mda", "dnc", "signguard", "geometric_median", "centered_clip"]:
        r = get_aggregator(name, f=1)(X)
        assert torch.isfinite(r.value_D).all(), name
    X[:] = float("nan")
    with pytest.raises(NodeMessageError, match="non-finite"):
        get_aggregator("geometric_median", f=1)(X)
