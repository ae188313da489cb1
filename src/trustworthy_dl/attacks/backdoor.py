"""Backdoor (trigger) data attack with optional model-replacement scaling.

T. Gu, B. Dolan-Gavitt, S. Garg, "BadNets", 2017 (image trigger patch); E. Bagdasaryan, A. Veit,
Y. Hua, D. Estrin, V. Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020 (model
replacement: the Byzantine update is scaled by ``boost`` ~ N / eta so it survives averaging).

A Byzantine node poisons ``poison_fraction`` of its batch (samples drawn from the generator):

* **image** batches (floating ``x`` of shape (B, ..., H, W)): a ``patch_size`` x ``patch_size``
  square of value ``patch_value`` (in the model's normalised input units; 3.0 is ~3 std above the
  mean: bright) is written in ``corner``, ``margin`` pixels from the border, on every channel; the
  label becomes ``target_class``.
* **text** batches (integer ``x`` (B, L) token ids, ``y`` (B, L) next-token targets with
  ``y[:, t] == x[:, t+1]``): the pattern ``trigger_ids + target_ids`` overwrites a window of the
  (L+1)-token stream ``s = [x, y[:, -1]]``, at its end (``position: end``) or at a uniformly drawn
  start (``position: random``); then ``x = s[:, :L]``, ``y = s[:, 1:]``, so after the trigger the
  model is taught the target continuation. Ids default to the UTF-8 bytes of ``trigger`` (" cf ")
  and ``target_text`` (" backdoor"), i.e. the byte-level tokenizer; give ``trigger_ids`` /
  ``target_ids`` for another tokenizer.

``boost`` (default 1: no scaling) is applied by :class:`AdversarialAttacker` to the Byzantine
node's update row (:func:`model_replacement`) in every attacking round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from trustworthy_dl.attacks.base import DataAttack, check_choice, check_float, check_int
from trustworthy_dl.attacks.label_flip import choose_samples
from trustworthy_dl.attacks.registry import DATA_ATTACKS

__all__ = ["Backdoor", "backdoor_success_rate", "model_replacement"]

_CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


def model_replacement(update_BD: Tensor, *, boost: float) -> Tensor:
    """Bagdasaryan et al.'s model replacement: the Byzantine update scaled by ``boost`` (e.g. N / eta)."""
    return update_BD * boost


@DATA_ATTACKS.register("backdoor")
@dataclass
class Backdoor(DataAttack):
    """Trigger -> target: image patch -> ``target_class``; text trigger phrase -> target continuation."""

    target_class: int = 0
    poison_fraction: float = 0.5
    patch_size: int = 3
    patch_value: float = 3.0
    corner: Literal["bottom_right", "bottom_left", "top_right", "top_left"] = "bottom_right"
    margin: int = 1
    trigger: str = " cf "
    target_text: str = " backdoor"
    trigger_ids: list[int] | None = None
    target_ids: list[int] | None = None
    position: Literal["end", "random"] = "end"
    boost: float = 1.0

    def __post_init__(self) -> None:
        self.target_class = check_int("target_class", self.target_class, low=0)
        self.poison_fraction = check_float(
            "poison_fraction", self.poison_fraction, low=0, high=1, low_open=True
        )
        self.patch_size = check_int("patch_size", self.patch_size, low=1)
        self.patch_value = check_float("patch_value", self.patch_value)
        self.corner = check_choice("corner", self.corner, _CORNERS)  # type: ignore[assignment]
        self.margin = check_int("margin", self.margin, low=0)
        self.position = check_choice("position", self.position, ("end", "random"))  # type: ignore[assignment]
        self.boost = check_float("boost", self.boost, low=0.0, low_open=True)
        for name in ("trigger", "target_text"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("trigger_ids", "target_ids"):
            ids = getattr(self, name)
            if ids is not None:
                if not isinstance(ids, (list, tuple)) or not ids:
                    raise ValueError(f"{name} must be a non-empty list of token ids, got {ids!r}")
                setattr(self, name, [check_int(name, i, low=0) for i in ids])
        if not self.trigger_token_ids() or not self.target_token_ids():
            raise ValueError("the text trigger and target must not be empty")

    # ------------------------------------------------------------------ image

    def trigger_image(self, x: Tensor) -> Tensor:
        """A copy of the image batch ``x`` (B, ..., H, W) with the trigger patch on every sample."""
        if x.dim() < 3:
            raise ValueError(f"image backdoor needs x of shape (B, ..., H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2], x.shape[-1]
        k, m = self.patch_size, self.margin
        if k + m > min(h, w):
            raise ValueError(f"patch_size + margin = {k + m} does not fit images of size {h}x{w}")
        r0 = h - m - k if self.corner.startswith("bottom") else m
        c0 = w - m - k if self.corner.endswith("right") else m
        out = x.clone()
        out[..., r0 : r0 + k, c0 : c0 + k] = self.patch_value
        return out

    # ------------------------------------------------------------------ text

    def trigger_token_ids(self) -> list[int]:
        return list(self.trigger_ids) if self.trigger_ids is not None else list(self.trigger.encode("utf-8"))

    def target_token_ids(self) -> list[int]:
        return (
            list(self.target_ids) if self.target_ids is not None else list(self.target_text.encode("utf-8"))
        )

    def trigger_text(
        self,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        num_classes: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Copies of every sequence of ``(x, y)`` with trigger + target written in (see module doc)."""
        if x.dim() != 2 or y.shape != x.shape:
            raise ValueError(
                f"text backdoor needs x and y of shape (B, L), got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        pattern = self.trigger_token_ids() + self.target_token_ids()
        if num_classes is not None and max(pattern) >= num_classes:
            raise ValueError(f"backdoor token id {max(pattern)} >= vocabulary size {num_classes}")
        b, length = x.shape
        p = len(pattern)
        if p > length + 1:
            raise ValueError(f"trigger + target is {p} tokens, longer than the sequence ({length} + 1)")
        s = torch.cat([x, y[:, -1:]], dim=1)
        if self.position == "random" and generator is not None:
            start = torch.randint(0, length + 2 - p, (b, 1), generator=generator, device=x.device)
        else:
            start = torch.full((b, 1), length + 1 - p, device=x.device, dtype=torch.long)
        idx = start + torch.arange(p, device=x.device)
        s = s.scatter(1, idx, torch.tensor(pattern, dtype=s.dtype, device=x.device).expand(b, -1))
        return s[:, :length], s[:, 1:]

    # ------------------------------------------------------------------ batch

    def apply(
        self, x: Tensor, y: Tensor, *, generator: torch.Generator, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        mask = choose_samples(x.shape[0], self.poison_fraction, generator, x.device)
        if x.dtype.is_floating_point:
            if self.target_class >= num_classes:
                raise ValueError(f"target_class={self.target_class} >= num_classes={num_classes}")
            xt = self.trigger_image(x)
            m = mask.view(-1, *([1] * (x.dim() - 1)))
            return torch.where(m, xt, x), torch.where(mask, torch.full_like(y, self.target_class), y)
        xt, yt = self.trigger_text(x, y, generator=generator, num_classes=num_classes)
        m = mask.view(-1, 1)
        return torch.where(m, xt, x), torch.where(m, yt, y)


@torch.no_grad()
def backdoor_success_rate(
    model: nn.Module, x_test: Tensor, y_test: Tensor, attack: Backdoor, *, batch_size: int = 256
) -> float:
    """Attack success rate of a backdoor on held-out data (NaN when no sample qualifies).

    Images: the fraction of test samples whose label is not ``target_class`` that the model
    classifies as ``target_class`` once the trigger patch is added. Text: the fraction of test
    sequences, with trigger + target written at their end, whose whole target continuation the
    model predicts (teacher-forced argmax at the target positions; logits (B, L, V)).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        if x_test.dtype.is_floating_point:
            keep = y_test != attack.target_class
            x = x_test[keep]
            hits = []
            for i in range(0, x.shape[0], batch_size):
                logits = model(attack.trigger_image(x[i : i + batch_size]).to(device))
                hits.append(logits.argmax(-1) == attack.target_class)
        else:
            target = torch.tensor(attack.target_token_ids(), device=device)
            t = target.numel()
            end = dataclasses.replace(attack, position="end")
            x_p, _ = end.trigger_text(x_test, y_test)
            hits = []
            for i in range(0, x_p.shape[0], batch_size):
                logits = model(x_p[i : i + batch_size].to(device))
                hits.append((logits[:, -t:].argmax(-1) == target).all(1))
        if not hits:
            return float("nan")
        return float(torch.cat(hits).float().mean())
    finally:
        model.train(was_training)
