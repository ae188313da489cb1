"""What a model is trained to do: the loss of a batch and how it is evaluated.

Classification: ``logits_BK`` against labels ``y_B``. Language modelling: ``logits_BLV`` against
next tokens ``y_BL``; perplexity is exp of the mean token loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EvalResult", "Task", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    perplexity: float | None


class Task:
    """Loss function of a classification (``kind='image'``) or language-model (``'text'``) task."""

    def __init__(self, kind: str) -> None:
        if kind not in ("image", "text"):
            raise ValueError(f"task kind must be 'image' or 'text', got {kind!r}")
        self.kind = kind

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.kind == "text":
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return F.cross_entropy(logits, y)

    def correct(self, logits: Tensor, y: Tensor) -> tuple[int, int]:
        """(correct predictions, predictions): tokens for text, samples for images."""
        pred = logits.argmax(-1)
        return int((pred == y).sum()), y.numel()


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: Tensor, y: Tensor, *, batch_size: int = 512) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``(x, y)``; perplexity for language models."""
    was_training = model.training
    model.eval()
    total_loss, correct, count, samples = 0.0, 0, 0, 0
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            logits = model(xb)
            total_loss += float(task.loss(logits, yb)) * len(xb)
            c, n = task.correct(logits, yb)
            correct, count, samples = correct + c, count + n, samples + len(xb)
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("cannot evaluate on an empty test set")
    loss = total_loss / samples
    ppl = math.exp(min(loss, 50.0)) if task.kind == "text" else None
    return EvalResult(loss=loss, accuracy=correct / count, perplexity=ppl)
