"""Data attacks: label-flip and backdoor change labels / inputs exactly as documented."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from trustworthy_dl.attacks import Backdoor, backdoor_success_rate, get_data_attack, model_replacement
from trustworthy_dl.errors import ConfigError

C = 10


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> tuple[Tensor, Tensor]:
    x = torch.rand(8, 1, 8, 8, generator=gen()) * 2 - 1  # in [-1, 1]: the patch value 3.0 stands out
    y = torch.arange(8) % C
    return x, y


def test_label_flip_fixed_default(images: tuple[Tensor, Tensor]) -> None:
    x, y = images
    x2, y2 = get_data_attack("label_flip").apply(x, y, generator=gen(), num_classes=C)
    assert torch.equal(y2, C - 1 - y) and torch.equal(x2, x)
    assert torch.equal(y, torch.arange(8) % C)  # the input batch is not modified


def test_label_flip_mapping_changes_only_listed_labels(images: tuple[Tensor, Tensor]) -> None:
    x, y = images
    _, y2 = get_data_attack("label_flip", mapping={"7": 1, 2: 5}).apply(x, y, generator=gen(), num_classes=C)
    expected = y.clone()
    expected[y == 7], expected[y == 2] = 1, 5
    assert torch.equal(y2, expected)


def test_label_flip_random_changes_every_label() -> None:
    y = torch.randint(0, C, (500,), generator=gen(3))
    attack = get_data_attack("label_flip", mode="random")
    _, y2 = attack.apply(torch.zeros(500, 2), y, generator=gen(1), num_classes=C)
    assert (y2 != y).all() and y2.min() >= 0 and y2.max() < C
    assert len(set(y2.tolist())) == C  # spread over the classes, not one fixed target
    _, y3 = attack.apply(torch.zeros(500, 2), y, generator=gen(1), num_classes=C)
    assert torch.equal(y2, y3)


def test_label_flip_fraction(images: tuple[Tensor, Tensor]) -> None:
    x, y = images
    _, y2 = get_data_attack("label_flip", fraction=0.5).apply(x, y, generator=gen(), num_classes=C)
    assert int((y2 != y).sum()) == 4


def test_label_flip_on_text_targets() -> None:
    y = torch.randint(0, 256, (2, 16), generator=gen())
    _, y2 = get_data_attack("label_flip").apply(y, y, generator=gen(), num_classes=256)
    assert torch.equal(y2, 255 - y)


def test_label_flip_bad_params() -> None:
    with pytest.raises(ConfigError, match="fixed, random"):
        get_data_attack("label_flip", mode="swap")
    with pytest.raises(ConfigError, match="mapping"):
        get_data_attack("label_flip", mode="random", mapping={1: 2})
    with pytest.raises(ValueError, match="num_classes"):
        get_data_attack("label_flip", mapping={12: 1}).apply(
            torch.zeros(1), torch.zeros(1), generator=gen(), num_classes=C
        )


@pytest.mark.parametrize("corner", ["bottom_right", "bottom_left", "top_right", "top_left"])
def test_backdoor_image_patch_and_labels(corner: str, images: tuple[Tensor, Tensor]) -> None:
    x, y = images
    attack = get_data_attack("backdoor", target_class=4, poison_fraction=0.5, patch_size=2, corner=corner)
    x2, y2 = attack.apply(x, y, generator=gen(), num_classes=C)
    poisoned = (x2 != x).flatten(1).any(1)
    assert int(poisoned.sum()) == 4
    assert (y2[poisoned] == 4).all() and torch.equal(y2[~poisoned], y[~poisoned])
    rows = slice(5, 7) if corner.startswith("bottom") else slice(1, 3)  # margin 1 from the border
    cols = slice(5, 7) if corner.endswith("right") else slice(1, 3)
    assert (x2[poisoned][..., rows, cols] == 3.0).all()
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[rows, cols] = False
    assert torch.equal(x2[..., mask], x[..., mask])  # nothing outside the patch changes


def test_backdoor_text_trigger_then_target() -> None:
    s = torch.randint(97, 123, (4, 33), generator=gen())  # lower-case letters
    x, y = s[:, :-1], s[:, 1:]
    attack = get_data_attack("backdoor", poison_fraction=1.0)
    x2, y2 = attack.apply(x, y, generator=gen(), num_classes=256)
    pattern = list(b" cf  backdoor")
    assert all(row[-len(pattern) :] == pattern for row in torch.cat([x2, y2[:, -1:]], 1).tolist())
    assert torch.equal(y2[:, :-1], x2[:, 1:])  # still next-token targets
    assert torch.equal(x2[:, : 32 - len(pattern) + 1], x[:, : 32 - len(pattern) + 1])


def test_backdoor_text_random_position() -> None:
    s = torch.randint(97, 123, (6, 41), generator=gen())
    attack = get_data_attack(
        "backdoor", poison_fraction=1.0, position="random", trigger_ids=[1, 2], target_ids=[3]
    )
    x2, y2 = attack.apply(s[:, :-1], s[:, 1:], generator=gen(5), num_classes=256)
    full = torch.cat([x2, y2[:, -1:]], 1).tolist()
    starts = [next(i for i in range(40) if row[i : i + 3] == [1, 2, 3]) for row in full]
    assert len(set(starts)) > 1  # not always the same place
    with pytest.raises(ValueError, match="vocabulary"):
        attack.apply(s[:, :-1], s[:, 1:], generator=gen(), num_classes=3)


def test_backdoor_bad_params() -> None:
    with pytest.raises(ConfigError, match="bottom_right"):
        get_data_attack("backdoor", corner="middle")
    with pytest.raises(ConfigError, match="poison_fraction"):
        get_data_attack("backdoor", poison_fraction=1.5)
    with pytest.raises(ValueError, match="fit"):
        get_data_attack("backdoor", patch_size=8).apply(
            torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), generator=gen(), num_classes=C
        )


def test_model_replacement_scales() -> None:
    u = torch.tensor([[1.0, -2.0]])
    assert torch.equal(model_replacement(u, boost=5.0), torch.tensor([[5.0, -10.0]]))


class PatchDetector(nn.Module):
    """Predicts class 4 when pixel (-2, -2) is bright (the bottom-right trigger), else class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(x.shape[0], C)
        logits[:, 1] = 1.5
        logits[:, 4] = x[:, 0, -2, -2] * self.w
        return logits


def test_backdoor_success_rate_images(images: tuple[Tensor, Tensor]) -> None:
    x, y = images
    model = PatchDetector().train()
    attack = get_data_attack("backdoor", target_class=4, patch_size=2)
    assert isinstance(attack, Backdoor)
    assert backdoor_success_rate(model, x, y, attack) == 1.0
    assert model.training  # mode restored
    assert backdoor_success_rate(model, x, y, Backdoor(target_class=4, corner="top_left")) == 0.0
    assert torch.isnan(torch.tensor(backdoor_success_rate(model, x[:1], torch.tensor([4]), attack)))


def test_backdoor_success_rate_text() -> None:
    attack = Backdoor(trigger_ids=[1, 2], target_ids=[3, 4, 5])
    bigram = torch.zeros(16, 16)
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]:
        bigram[a, b] = 1.0
    model = nn.Embedding(16, 16)  # logits for the next token = a row of the bigram table
    with torch.no_grad():
        model.weight.copy_(bigram)
    s = torch.randint(6, 16, (5, 13), generator=gen())
    assert backdoor_success_rate(model, s[:, :-1], s[:, 1:], attack) == 1.0
    with torch.no_grad():
        model.weight.zero_()
    assert backdoor_success_rate(model, s[:, :-1], s[:, 1:], attack) == 0.0
