"""Model zoo: registry, shapes, norms, determinism, per-node vmap gradients, pipeline stages."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from trustworthy_dl.errors import ConfigError, UnknownNameError
from trustworthy_dl.models import (
    count_parameters,
    get_model,
    list_models,
    make_norm,
    model_blocks,
    model_kind,
    model_sizes,
    split_into_stages,
)
from trustworthy_dl.models.gpt2 import build_gpt2
from trustworthy_dl.models.norm import group_count
from trustworthy_dl.models.stages import _balanced_bounds

IMAGE_MODELS = [n for n in list_models() if model_kind(n) == "image"]
VOCAB, BLOCK = 64, 16


def _seeded(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    return get_model(name, **kwargs)  # type: ignore[arg-type]


def _gpt2(seed: int = 0, attn: str = "eager") -> nn.Module:
    torch.manual_seed(seed)
    return build_gpt2("tiny", vocab_size=VOCAB, block_size=BLOCK, attn_implementation=attn)  # type: ignore[arg-type]


# --- registry ----------------------------------------------------------------------------------


def test_registry_lists_every_family() -> None:
    expected = {"mlp", "cnn", "gpt2", "vgg11", "vgg13", "vgg16"}
    expected |= {f"resnet{d}" for d in (18, 20, 32, 50, 56, 101)}
    assert expected <= set(list_models())
    assert model_kind("gpt2") == "text" and model_kind("cnn") == "image"
    assert model_sizes("gpt2") == ["tiny", "small", "medium", "large"]
    assert model_sizes("cnn") == ["small", "default"]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="resnet20") as info:
        get_model("resnet7")
    assert "cnn" in info.value.valid


def test_unknown_size_is_config_error() -> None:
    with pytest.raises(ConfigError, match="tiny, small, medium, large"):
        get_model("gpt2", size="xl")
    with pytest.raises(ConfigError, match="huge"):
        get_model("cnn", size="huge")


# --- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8), (3, 32)], ids=["digits8x8", "cifar32x32"])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_forward_shape(name: str, shape: tuple[int, int]) -> None:
    channels, side = shape
    for size in model_sizes(name):
        model = get_model(name, size=size, num_classes=7, in_channels=channels, image_size=side)
        with torch.no_grad():
            out = model(torch.randn(2, channels, side, side))
        assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_mnist_shaped_input(name: str) -> None:
    out = get_model(name, in_channels=1, image_size=28)(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_resnet_stem_follows_image_size() -> None:
    small = get_model("resnet18", in_channels=3, image_size=32)
    large = get_model("resnet18", in_channels=3, image_size=96)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert any(isinstance(m, nn.MaxPool2d) for m in large.modules())
    with torch.no_grad():
        assert large(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_gpt2_tiny_forward_shape() -> None:
    model = get_model("gpt2", vocab_size=VOCAB, block_size=BLOCK)
    out = model(torch.randint(0, VOCAB, (2, BLOCK)))
    assert out.shape == (2, BLOCK, VOCAB)
    assert model.hf.config.n_positions == BLOCK  # type: ignore[union-attr]


def test_gpt2_builds_offline_without_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = get_model("gpt2", vocab_size=VOCAB, block_size=BLOCK)
    config = model.hf.config  # type: ignore[union-attr]
    assert (config.n_layer, config.n_embd, config.n_head) == (2, 128, 4)
    assert config.use_cache is False
    assert config.eos_token_id == VOCAB - 1  # inside the vocabulary
    assert config._attn_implementation == "eager"  # batched under vmap
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    model.train()
    ids = torch.randint(0, VOCAB, (2, BLOCK))
    assert torch.equal(model(ids), model(ids))  # no dropout noise even in train mode


def test_gpt2_is_causal() -> None:
    model = _gpt2()
    ids = torch.randint(0, VOCAB, (1, BLOCK))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % VOCAB
    with torch.no_grad():
        assert torch.equal(model(ids)[:, :-1], model(changed)[:, :-1])


# --- parameter counts (meta device: no memory, no init time) -----------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # torchvision's ImageNet ResNets (BatchNorm and GroupNorm have the same parameters).
        ("resnet18", {"num_classes": 1000, "in_channels": 3, "image_size": 224}, 11_689_512),
        ("resnet50", {"num_classes": 1000, "in_channels": 3, "image_size": 224}, 25_557_032),
        ("resnet101", {"num_classes": 1000, "in_channels": 3, "image_size": 224}, 44_549_160),
        # He et al.'s resnet20 (0.27M) with 1x1-conv shortcuts: 269,722 + 2,752.
        ("resnet20", {"in_channels": 3, "image_size": 32}, 272_474),
        # OpenAI GPT-2 checkpoints (vocab 50257, 1024 positions, tied embeddings).
        ("gpt2", {"size": "small", "vocab_size": 50257, "block_size": 1024}, 124_439_808),
        ("gpt2", {"size": "medium", "vocab_size": 50257, "block_size": 1024}, 354_823_168),
        ("gpt2", {"size": "large", "vocab_size": 50257, "block_size": 1024}, 774_030_080),
    ],
)
def test_parameter_counts_match_references(name: str, kwargs: dict[str, object], expected: int) -> None:
    with torch.device("meta"):
        model = get_model(name, **kwargs)  # type: ignore[arg-type]
    assert count_parameters(model) == expected


def test_count_parameters_counts_tied_weights_once() -> None:
    model = _gpt2()
    embd = 128
    per_block = 12 * embd * embd + 13 * embd  # attn 4 D^2 + 4 D, mlp 8 D^2 + 5 D, 2 LayerNorms 4 D
    assert count_parameters(model) == (VOCAB + BLOCK) * embd + 2 * per_block + 2 * embd
    model.hf.transformer.wpe.weight.requires_grad_(False)  # type: ignore[union-attr]
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - BLOCK * embd


# --- norms ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "layer"), [("group", nn.GroupNorm), ("batch", nn.BatchNorm2d), ("none", None)]
)
@pytest.mark.parametrize("name", ["cnn", "resnet20", "vgg11"])
def test_norm_option(name: str, norm: str, layer: type[nn.Module] | None) -> None:
    model = get_model(name, norm=norm, in_channels=3, image_size=16)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)]
    if layer is None:
        assert norms == []
        assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    else:
        assert norms and all(isinstance(m, layer) for m in norms)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_bad_norm_is_config_error() -> None:
    with pytest.raises(ConfigError, match="group, batch, none"):
        get_model("cnn", norm="layer")
    with pytest.raises(ConfigError, match="group, batch, none"):
        make_norm("layer", 16)


@pytest.mark.parametrize("channels", [1, 3, 8, 16, 24, 32, 64, 96, 256, 2048])
def test_group_count_divides_channels(channels: int) -> None:
    groups = group_count(channels)
    assert 1 <= groups <= 32 and channels % groups == 0
    assert groups == 1 or channels // groups >= 4


# --- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "gpt2"])
def test_same_seed_same_init(name: str) -> None:
    kwargs = {"vocab_size": VOCAB, "block_size": BLOCK}
    a, b, c = _seeded(name, 0, **kwargs), _seeded(name, 0, **kwargs), _seeded(name, 1, **kwargs)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# --- per-node gradients with torch.func --------------------------------------------------------


def _per_node_grads(model: nn.Module, loss_of_out, x_N, y_N, *, stacked_params: bool = False):  # type: ignore[no-untyped-def]
    """``vmap(grad(loss))`` over N nodes and a plain loop; returns both as dicts of (N, ...) tensors."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    n = x_N.shape[0]

    def loss(p, x, y):  # type: ignore[no-untyped-def]
        return loss_of_out(functional_call(model, p, (x,)), y)

    if stacked_params:  # every node holds its own copy of the parameters
        params_N = {k: v.unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}
        batched = vmap(grad(loss), in_dims=(0, 0, 0))(params_N, x_N, y_N)
    else:
        batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x_N, y_N)
    looped = [grad(loss)(params, x_N[i], y_N[i]) for i in range(n)]
    return batched, {k: torch.stack([g[k] for g in looped]) for k in params}


def _image_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def _lm_loss(out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("stacked_params", [False, True])
def test_vmap_grad_cnn_group_norm(stacked_params: bool) -> None:
    torch.manual_seed(0)
    model = get_model("cnn", in_channels=1, image_size=8, norm="group")
    x_N = torch.randn(4, 5, 1, 8, 8)
    y_N = torch.randint(0, 10, (4, 5))
    batched, looped = _per_node_grads(model, _image_loss, x_N, y_N, stacked_params=stacked_params)
    for k in looped:
        assert batched[k].shape == looped[k].shape
        torch.testing.assert_close(batched[k], looped[k], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(looped["head.1.weight"][0], looped["head.1.weight"][1])  # nodes differ


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vmap_grad_gpt2_tiny(attn: str) -> None:
    model = _gpt2(attn=attn)
    ids_N = torch.randint(0, VOCAB, (3, 2, BLOCK))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched, looped = _per_node_grads(model, _lm_loss, ids_N, ids_N)
    for k in looped:
        torch.testing.assert_close(batched[k], looped[k], rtol=1e-4, atol=1e-6)
    # functorch warns when an op has no batching rule and it falls back to a loop (CPU sdpa does).
    if attn == "eager":
        assert not [w for w in caught if "performance drop" in str(w.message)]


# --- pipeline stages --------------------------------------------------------------------------


STAGE_CASES = [
    ("mlp", {"in_channels": 1, "image_size": 8}),
    ("cnn", {"in_channels": 1, "image_size": 8}),
    ("resnet20", {"in_channels": 3, "image_size": 16}),
    ("resnet18", {"in_channels": 3, "image_size": 16}),
    ("vgg11", {"in_channels": 3, "image_size": 16}),
]


def _image_batch(kwargs: dict[str, object]) -> torch.Tensor:
    c, s = kwargs["in_channels"], kwargs["image_size"]
    return torch.randn(2, c, s, s)  # type: ignore[call-overload]


def _assert_stages_compose(model: nn.Module, x: torch.Tensor) -> None:
    model.eval()
    n_blocks = len(model_blocks(model))
    with torch.no_grad():
        expected = model(x)
        for num_stages in sorted({1, 2, 3, min(4, n_blocks), n_blocks}):
            stages = split_into_stages(model, num_stages)
            assert len(stages) == num_stages
            h = x
            for stage in stages:
                h = stage(h)
            assert torch.equal(h, expected), f"{num_stages} stages"
            # Together the stages hold every parameter (GPT-2's tied embedding sits in the first and last).
            ids = [id(p) for s in stages for p in s.parameters()]
            assert set(ids) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(("name", "kwargs"), STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_stages_compose_to_the_model(name: str, kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = get_model(name, **kwargs)  # type: ignore[arg-type]
    _assert_stages_compose(model, _image_batch(kwargs))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_stages_compose_to_the_model(attn: str) -> None:
    model = _gpt2(attn=attn)
    blocks = model_blocks(model)
    assert len(blocks) == 2 + 2  # embedding | 2 transformer blocks | ln_f + head
    _assert_stages_compose(model, torch.randint(0, VOCAB, (2, BLOCK)))


def test_gpt2_stage_gradients_match() -> None:
    model = _gpt2()
    ids = torch.randint(0, VOCAB, (2, BLOCK))
    _lm_loss(model(ids), ids).backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}  # type: ignore[union-attr]
    model.zero_grad()
    h = ids
    for stage in split_into_stages(model, 3):
        h = stage(h)
    _lm_loss(h, ids).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k])


def test_stages_are_balanced_by_parameters() -> None:
    model = get_model("resnet20", in_channels=3, image_size=32)
    sizes = [count_parameters(s) for s in split_into_stages(model, 3)]
    assert sum(sizes) == count_parameters(model)
    assert max(sizes) < 0.5 * sum(sizes)  # the last stage group holds ~3/4 of resnet20's weights


def test_bad_stage_counts_are_config_errors() -> None:
    model = get_model("cnn")
    with pytest.raises(ConfigError, match="3 blocks"):
        split_into_stages(model, 4)
    with pytest.raises(ConfigError, match="0 stages"):
        split_into_stages(model, 0)

    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ConfigError, match="Opaque"):
        split_into_stages(Opaque(), 2)


def test_balanced_bounds_hand_cases() -> None:
    assert _balanced_bounds([1, 1, 1, 1], 2) == [0, 2, 4]
    assert _balanced_bounds([5], 1) == [0, 1]
    assert _balanced_bounds([1, 2, 3], 3) == [0, 1, 2, 3]
    bounds = _balanced_bounds([10, 1, 1, 1, 1, 10], 3)
    assert max(sum([10, 1, 1, 1, 1, 10][a:b]) for a, b in itertools.pairwise(bounds)) == 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(1, 8))
def test_balanced_bounds_is_optimal(weights: list[int], parts: int) -> None:
    parts = min(parts, len(weights))
    bounds = _balanced_bounds(weights, parts)
    assert bounds[0] == 0 and bounds[-1] == len(weights) and len(bounds) == parts + 1
    assert all(a < b for a, b in itertools.pairwise(bounds))  # non-empty stages
    got = max(sum(weights[a:b]) for a, b in itertools.pairwise(bounds))
    best = min(
        max(sum(weights[a:b]) for a, b in itertools.pairwise((0, *cuts, len(weights))))
        for cuts in itertools.combinations(range(1, len(weights)), parts - 1)
    )
    assert got == best
