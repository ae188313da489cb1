"""Update attacks: every registered one changes the Byzantine rows in the documented way."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from trustworthy_dl.attacks import (
    DATA_ATTACKS,
    UPDATE_ATTACKS,
    AttackContext,
    attack_names,
    attack_params,
    get_attack,
    get_data_attack,
    list_attacks,
)
from trustworthy_dl.attacks.alie import alie_z
from trustworthy_dl.attacks.minmax import perturbation
from trustworthy_dl.attacks.search import maximise_scale
from trustworthy_dl.errors import ConfigError, UnknownNameError

N, B, D = 10, 3, 400
H = N - B


def median(updates_ND: Tensor) -> Tensor:
    """Coordinate-wise median: the aggregator the optimal attacks are tested against."""
    return updates_ND.median(0).values


@pytest.fixture
def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    honest_HD = torch.randn(H, D, generator=g) + 1.0  # non-zero mean: IPM / min-max need a direction
    own_BD = torch.randn(B, D, generator=g) + 1.0
    return honest_HD, own_BD


def run(name: str, honest_HD: Tensor, own_BD: Tensor, **params: object) -> Tensor:
    attack = get_attack(name, **params)
    rows = honest_HD if attack.knowledge == "omniscient" else own_BD
    ctx = AttackContext(aggregator=median, num_nodes=N)
    out = attack(rows, num_byzantine=B, generator=torch.Generator().manual_seed(1), context=ctx)
    assert out.shape == (B, D)
    return out


def deviation(byz_BD: Tensor, honest_HD: Tensor) -> float:
    """How far the Byzantine rows move the median away from the honest mean."""
    agg = median(torch.cat([honest_HD, byz_BD]))
    return float(torch.linalg.vector_norm(agg - honest_HD.mean(0)))


def mu_sigma(honest_HD: Tensor) -> tuple[Tensor, Tensor]:
    return honest_HD.mean(0), honest_HD.std(0, correction=0)


def _same_rows(out: Tensor) -> None:
    assert torch.equal(out, out[:1].expand_as(out))


def _gaussian(h: Tensor, own: Tensor, out: Tensor) -> None:
    assert not torch.equal(out[0], out[1])  # each row its own draw
    assert 150 < float(out.std()) < 250 and abs(float(out.mean())) < 20  # N(0, 200^2)


def _zero(h: Tensor, own: Tensor, out: Tensor) -> None:
    assert torch.equal(out, torch.zeros(B, D))


def _constant(h: Tensor, own: Tensor, out: Tensor) -> None:
    assert torch.equal(out, torch.full((B, D), -100.0))


def _zero_sum(h: Tensor, own: Tensor, out: Tensor) -> None:
    _same_rows(out)
    torch.testing.assert_close(torch.cat([h, out]).sum(0), torch.zeros(D), atol=1e-4, rtol=0)


def _sign_flip(h: Tensor, own: Tensor, out: Tensor) -> None:
    torch.testing.assert_close(out, -own)


def _scaling(h: Tensor, own: Tensor, out: Tensor) -> None:
    torch.testing.assert_close(out, 10.0 * own)


def _non_finite(h: Tensor, own: Tensor, out: Tensor) -> None:
    assert torch.isnan(out).all()


def _mimic(h: Tensor, own: Tensor, out: Tensor) -> None:
    torch.testing.assert_close(out, h[0].expand(B, D))


def _alie(h: Tensor, own: Tensor, out: Tensor) -> None:
    mu, sigma = mu_sigma(h)
    torch.testing.assert_close(out, (mu - alie_z(N, B) * sigma).expand(B, D))


def _ipm(h: Tensor, own: Tensor, out: Tensor) -> None:
    torch.testing.assert_close(out, (-0.1 * h.mean(0)).expand(B, D))


def _mean_shift(h: Tensor, own: Tensor, out: Tensor) -> None:
    mu, sigma = mu_sigma(h)
    torch.testing.assert_close(out, (mu - 1.5 * sigma).expand(B, D))


def _optimal_alie(h: Tensor, own: Tensor, out: Tensor) -> None:
    _same_rows(out)
    mu, sigma = mu_sigma(h)
    z = (mu - out[0]) / sigma  # out = mu - z * sigma with one z > 0
    assert float(z.min()) > 0 and torch.allclose(z, z[0].expand_as(z), rtol=1e-4)
    assert deviation(out, h) >= deviation(get_attack("alie")(h, num_byzantine=B), h) - 1e-6


def _optimal_ipm(h: Tensor, own: Tensor, out: Tensor) -> None:
    _same_rows(out)
    eps = -out[0] / h.mean(0)
    assert float(eps.min()) > 0 and torch.allclose(eps, eps[0].expand_as(eps), rtol=1e-4)
    assert deviation(out, h) >= deviation(get_attack("ipm")(h, num_byzantine=B), h) - 1e-6


def _min_max(h: Tensor, own: Tensor, out: Tensor) -> None:
    _same_rows(out)
    bound = float(torch.cdist(h, h).square().max())
    worst = float((out[0] - h).square().sum(1).max())
    assert worst <= bound * (1 + 1e-4) and worst >= bound * (1 - 1e-3)  # on the boundary
    assert float(torch.linalg.vector_norm(out[0] - h.mean(0))) > 0.1


def _min_sum(h: Tensor, own: Tensor, out: Tensor) -> None:
    _same_rows(out)
    bound = float(torch.cdist(h, h).square().sum(1).max())
    total = float((out[0] - h).square().sum())
    assert total <= bound * (1 + 1e-4) and total >= bound * (1 - 1e-3)
    assert float(torch.linalg.vector_norm(out[0] - h.mean(0))) > 0.1


EFFECTS: dict[str, Callable[[Tensor, Tensor, Tensor], None]] = {
    "gaussian": _gaussian,
    "zero_gradient": _zero,
    "constant": _constant,
    "zero_sum": _zero_sum,
    "sign_flip": _sign_flip,
    "scaling": _scaling,
    "non_finite": _non_finite,
    "mimic": _mimic,
    "alie": _alie,
    "ipm": _ipm,
    "mean_shift": _mean_shift,
    "optimal_alie": _optimal_alie,
    "optimal_ipm": _optimal_ipm,
    "min_max": _min_max,
    "min_sum": _min_sum,
}


@pytest.mark.parametrize("name", UPDATE_ATTACKS.names())
def test_every_update_attack_has_its_documented_effect(name: str, data: tuple[Tensor, Tensor]) -> None:
    if name not in EFFECTS:
        pytest.fail(f"update attack {name!r} has no effect check in EFFECTS")
    honest_HD, own_BD = data
    out = run(name, honest_HD, own_BD)
    assert not torch.equal(out, own_BD)  # never silently honest
    EFFECTS[name](honest_HD, own_BD, out)


@pytest.mark.parametrize("name", UPDATE_ATTACKS.names())
def test_update_attacks_are_deterministic_given_the_generator(name: str, data: tuple[Tensor, Tensor]) -> None:
    a, b = run(name, *data), run(name, *data)
    assert torch.equal(a.nan_to_num(), b.nan_to_num())


def test_registry_lists() -> None:
    assert set(EFFECTS) == set(list_attacks("update"))
    assert set(list_attacks("data")) == {"label_flip", "backdoor"}
    assert attack_names()[0] == "none"
    assert set(attack_names()[1:]) == set(list_attacks())
    assert attack_params("gaussian") == {"mean": 0.0, "std": 200.0, "center": "zero"}
    assert "boost" in attack_params("backdoor")


# --------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [(10, 3, 0.5244005127080407), (50, 24, 1.7506860712521692), (10, 0, -0.2533471031357997)],
)
def test_alie_z_matches_the_paper(n: int, f: int, z: float) -> None:
    # s = floor(n/2 + 1) - f; z = Phi^-1((n - s) / n): (10,3): s=3, Phi^-1(0.7); (50,24): s=2, Phi^-1(0.96)
    assert alie_z(n, f) == pytest.approx(z, abs=1e-9)


def test_alie_z_undefined_when_f_too_large() -> None:
    with pytest.raises(ValueError, match="undefined"):
        alie_z(4, 3)


def test_alie_exact_on_hand_computed_case() -> None:
    honest = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # mu = (2, 2), sigma = (1, 2)
    out = get_attack("alie", z=1.5)(honest, num_byzantine=2)
    assert torch.equal(out, torch.tensor([[0.5, -1.0], [0.5, -1.0]]))
    # No z: N = 2 honest + 1 Byzantine = 3 -> s = floor(2.5) - 1 = 1 -> z = Phi^-1(2/3).
    out = get_attack("alie")(honest, num_byzantine=1)
    z = alie_z(3, 1)
    torch.testing.assert_close(out, torch.tensor([[2.0 - z, 2.0 - 2 * z]]))


def test_ipm_sign_flip_scaling_exact() -> None:
    honest = torch.tensor([[1.0, -2.0], [3.0, 6.0]])  # mean (2, 2)
    assert torch.equal(get_attack("ipm", epsilon=0.5)(honest, num_byzantine=1), torch.tensor([[-1.0, -1.0]]))
    own = torch.tensor([[1.0, -2.0]])
    assert torch.equal(get_attack("sign_flip", scale=3)(own, num_byzantine=1), torch.tensor([[-3.0, 6.0]]))
    assert torch.equal(get_attack("scaling", scale=-2)(own, num_byzantine=2), torch.tensor([[-2.0, 4.0]] * 2))
    assert torch.equal(get_attack("boosting")(own, num_byzantine=1), 10 * own)  # alias


def test_non_finite_fraction_and_values(data: tuple[Tensor, Tensor]) -> None:
    _, own = data
    g = torch.Generator().manual_seed(0)
    out = get_attack("non_finite", value="inf", fraction=0.1)(own, num_byzantine=B, generator=g)
    bad = torch.isinf(out)
    assert bad.any(1).all() and 0.03 < float(bad.float().mean()) < 0.2 and (out[bad] > 0).all()
    assert torch.equal(out[~bad], own[~bad])  # the rest stays honest
    out = get_attack("non_finite", value="-inf")(own, num_byzantine=B)
    assert (out == float("-inf")).all()


def test_optimal_variants_beat_fixed_scale_against_median(data: tuple[Tensor, Tensor]) -> None:
    honest, _ = data
    ctx = AttackContext(aggregator=median, num_nodes=N)
    for opt, fixed in [("optimal_alie", get_attack("alie")), ("optimal_ipm", get_attack("ipm"))]:
        best = get_attack(opt)(honest, num_byzantine=B, context=ctx)
        base = fixed(honest, num_byzantine=B, context=ctx)
        assert deviation(best, honest) >= deviation(base, honest) - 1e-6
    # IPM's default epsilon = 0.1 is not optimal against the median: a strict gain.
    best = get_attack("optimal_ipm")(honest, num_byzantine=B, context=ctx)
    assert deviation(best, honest) > 1.1 * deviation(get_attack("ipm")(honest, num_byzantine=B), honest)


def test_optimal_attack_needs_an_aggregator(data: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(ValueError, match=r"context\.aggregator"):
        get_attack("optimal_alie")(data[0], num_byzantine=B, context=AttackContext())


def test_optimal_attack_restores_a_stateful_aggregator(data: tuple[Tensor, Tensor]) -> None:
    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, updates_ND: Tensor) -> Tensor:
            self.calls += 1
            return updates_ND.median(0).values

        def state_dict(self) -> dict[str, int]:
            return {"calls": self.calls}

        def load_state_dict(self, sd: dict[str, int]) -> None:
            self.calls = sd["calls"]

    agg = Counting()
    get_attack("optimal_ipm", max_doublings=3, refine_steps=3)(
        data[0], num_byzantine=B, context=AttackContext(aggregator=agg)
    )
    assert agg.calls == 0


def test_line_search_finds_the_peak() -> None:
    s, v = maximise_scale(lambda s: -((s - 5.3) ** 2), init=1.0, max_doublings=10, refine_steps=30)
    assert s == pytest.approx(5.3, abs=1e-3) and v <= 0
    s, _ = maximise_scale(lambda s: -((s - 0.05) ** 2), init=1.0, max_doublings=10, refine_steps=30)
    assert s == pytest.approx(0.05, abs=1e-3)
    s, _ = maximise_scale(lambda s: math.nan if s > 1 else s, init=1.0, max_doublings=4, refine_steps=4)
    assert s <= 1.0  # non-finite objective values never win


@pytest.mark.parametrize("direction", ["unit_vec", "sign", "std"])
def test_min_max_directions(direction: str, data: tuple[Tensor, Tensor]) -> None:
    honest, _ = data
    mu, p = perturbation(honest, direction)
    out = get_attack("min_max", direction=direction)(honest, num_byzantine=1)[0]
    gamma = (out - mu) / p
    assert float(gamma.min()) > 0 and torch.allclose(gamma, gamma[0].expand_as(gamma), rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    h=st.integers(2, 9),
    d=st.integers(1, 30),
    direction=st.sampled_from(["unit_vec", "sign", "std"]),
)
def test_min_max_and_min_sum_constraints_hold(seed: int, h: int, d: int, direction: str) -> None:
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(h, d, generator=g, dtype=torch.float64) * 3 + torch.randn(
        d, generator=g, dtype=torch.float64
    )
    pair = torch.cdist(honest, honest).square()
    m = get_attack("min_max", direction=direction)(honest, num_byzantine=2)
    assert float((m[0] - honest).square().sum(1).max()) <= float(pair.max()) * (1 + 1e-9) + 1e-9
    s = get_attack("min_sum", direction=direction)(honest, num_byzantine=2)
    assert float((s[0] - honest).square().sum()) <= float(pair.sum(1).max()) * (1 + 1e-9) + 1e-9


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", UPDATE_ATTACKS.names() + DATA_ATTACKS.names())
def test_unknown_param_is_a_config_error_listing_valid_ones(name: str) -> None:
    build = get_data_attack if name in DATA_ATTACKS else get_attack
    with pytest.raises(ConfigError) as exc:
        build(name, not_a_param=1)
    msg = str(exc.value)
    assert "not_a_param" in msg and name in msg
    for param in attack_params(name):
        assert param in msg


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("gaussian", {"std": -1.0}, "std"),
        ("gaussian", {"std": "big"}, "number"),
        ("non_finite", {"value": "huge"}, "nan, inf, -inf"),
        ("non_finite", {"fraction": 0.0}, "fraction"),
        ("min_max", {"direction": "up"}, "unit_vec, sign, std"),
        ("ipm", {"epsilon": 0}, "epsilon"),
        ("optimal_alie", {"max_doublings": 1.5}, "integer"),
        ("mimic", {"target": -1}, "target"),
    ],
)
def test_bad_values_are_config_errors(name: str, params: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        get_attack(name, **params)


def test_name_errors() -> None:
    with pytest.raises(UnknownNameError, match="alie"):
        get_attack("not_an_attack")
    with pytest.raises(ConfigError, match="get_data_attack"):
        get_attack("backdoor")
    with pytest.raises(ConfigError, match="get_attack"):
        get_data_attack("alie")


def test_random_attack_without_generator_fails_loudly(data: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(ValueError, match="Generator"):
        get_attack("gaussian")(data[1], num_byzantine=B)


def test_gaussian_centred_on_the_honest_mean_draws_per_node() -> None:
    """MANDERA's Gaussian attack: honest mean + std N(0, 1), an independent draw per node."""
    from trustworthy_dl.attacks import AdversarialAttacker
    from trustworthy_dl.config import AttackConfig

    rows = torch.randn(10, 4000, generator=torch.Generator().manual_seed(0))
    params = {"center": "honest_mean", "std": 30.0}
    att = AdversarialAttacker(
        AttackConfig(name="gaussian", byzantine_ids=[1, 4], params=params), num_nodes=10, seed=0
    )
    out = att.corrupt(rows, round=0)
    honest_mu = rows[[0, 2, 3, 5, 6, 7, 8, 9]].mean(0)
    for node in (1, 4):
        dev = out[node] - honest_mu
        assert abs(float(dev.mean())) < 2.0 and float(dev.std()) == pytest.approx(30.0, rel=0.05)
    assert not torch.equal(out[1], out[4])  # independent, even with collude (the default)
    assert (
        get_attack("gaussian").knowledge == "own"
        and get_attack("gaussian", center="honest_mean").knowledge == "omniscient"
    )


@pytest.mark.parametrize(("formula", "expected"), [("alie", 0.4958503473), ("mandera", 0.2858408749)])
def test_mean_shift_from_n_and_f(formula: str, expected: float) -> None:
    """n = 100, f = 20: s = floor(51) - 20 = 31; ALIE: Phi^-1(69/100); MANDERA: Phi^-1(49/80)."""
    from trustworthy_dl.attacks.mean_shift import MeanShift

    assert MeanShift(shift=None, z_formula=formula).shift_for(100, 20) == pytest.approx(expected, abs=1e-9)
    assert MeanShift().shift_for(100, 20) == 1.5  # the fixed default is still there
    honest = torch.randn(80, 30, generator=torch.Generator().manual_seed(1))
    ctx = AttackContext(num_nodes=100)
    byz = MeanShift(shift=None, z_formula=formula)(honest, num_byzantine=20, context=ctx)
    mu, sd = honest.mean(0), honest.std(0, correction=0)
    torch.testing.assert_close(byz[0], mu - expected * sd)


def test_mimic_auto_target_is_the_node_furthest_along_the_top_direction() -> None:
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(9, 40, generator=g) * 0.1
    direction = torch.zeros(40)
    direction[0] = 1.0
    spread = torch.tensor([0.5, -1.0, 0.2, 3.0, -0.4, 0.1, 0.8, -2.0, 0.3])
    honest += spread[:, None] * direction  # the top principal direction is coordinate 0
    attack = get_attack("mimic", target="auto")
    byz = attack(honest, num_byzantine=2)
    assert torch.equal(byz[0], honest[3]) and torch.equal(byz[1], honest[3])
    assert get_attack("mimic")(honest, num_byzantine=1)[0].equal(honest[0])  # today's default
