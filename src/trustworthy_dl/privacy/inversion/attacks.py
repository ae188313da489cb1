"""Gradient-inversion attacks: reconstruct a node's batch from the update it sent.

* ``dlg`` (Zhu et al. 2019, "Deep Leakage from Gradients"): L-BFGS (lr 1) on dummy inputs and
  dummy soft labels, minimising the squared distance between the dummy batch's gradient and the
  observed one.
* ``idlg`` (Zhao et al. 2020): the label is read off the last layer's weight gradient first (for
  cross-entropy with non-negative features only the true class's row sums to a negative value),
  then DLG runs on the inputs alone. For batches above 1 the B classes with the most negative
  rows are taken (exact only when the labels differ).
* ``ig`` (Geiping et al. 2020, "Inverting Gradients"): labels as iDLG, then Adam (lr 0.1) on the
  sign of the gradient of ``1 - cos(g(x'), g) + tv * TV(x')``, step decay at 3/8, 5/8 and 7/8 of
  the iterations, inputs kept inside the data's box.

Against a sparsified update (more than half its coordinates zero) the attacker knows the support
(the indices are sent) and matches the gradient on it only.

The observed update is what the node sent (noisy, clipped or sparsified when privacy is on); the
attacker knows the model parameters of that round and the loss (the threat model's eavesdropper
or curious coordinator). Inputs live in the model's (normalised) space; ``box`` is its range.

Legend: B images in the batch, K classes, C x H x W an image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["ATTACKS", "Reconstruction", "infer_labels", "invert"]

ATTACKS = ("dlg", "idlg", "ig")


@dataclass
class Reconstruction:
    x_BCHW: Tensor  # the reconstructed inputs (model space)
    labels_B: Tensor  # the labels the attack settled on
    loss: float  # the final matching loss


def _grads(model: nn.Module, params: dict[str, Tensor], x: Tensor, target_BK: Tensor) -> list[Tensor]:
    """Gradient of the mean soft-label cross-entropy, with a graph (for the attack's own step)."""
    logits = functional_call(model, params, (x,))
    loss = -(target_BK * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    return list(torch.autograd.grad(loss, list(params.values()), create_graph=True))


def infer_labels(observed: dict[str, Tensor], batch: int, head_weight: str) -> Tensor:
    """iDLG: the labels from the last linear layer's weight gradient (K, F)."""
    rows = observed[head_weight].sum(-1)
    return torch.argsort(rows)[:batch]


def _masked(grads: list[Tensor], masks: list[Tensor] | None) -> list[Tensor]:
    return grads if masks is None else [g * m for g, m in zip(grads, masks)]


def _tv(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(
    attack: str,
    model: nn.Module,
    observed_D: Tensor,
    unflatten: Callable[[Tensor], dict[str, Tensor]],
    *,
    shape_BCHW: tuple[int, ...],
    num_classes: int,
    box: tuple[float, float],
    iterations: int,
    seed: int = 0,
    tv: float = 1e-4,
) -> Reconstruction:
    """Run ``attack`` against the flat update ``observed_D`` of ``model`` (at its current parameters)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown inversion attack {attack!r}; valid: {', '.join(ATTACKS)}")
    params = {
        n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad
    }
    if not params:
        raise ValueError("the model has no trainable parameters: there is no gradient to invert")
    observed = {n: v.detach() for n, v in unflatten(observed_D.detach()).items()}
    head = [n for n, p in params.items() if p.dim() == 2][-1]  # the last linear layer's weight
    b = shape_BCHW[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape_BCHW, generator=g).requires_grad_(True)
    targets = list(observed.values())
    # a sparsified update tells the attacker its support: match the gradient there only
    nonzero = sum(int((t != 0).sum()) for t in targets)
    masks = [(t != 0).float() for t in targets] if nonzero < 0.5 * observed_D.numel() else None
    if attack == "dlg":
        y_logits = torch.randn(b, num_classes, generator=g).requires_grad_(True)
        return _lbfgs(model, params, targets, masks, x, y_logits, None, iterations)
    labels = infer_labels(observed, b, head)
    onehot = F.one_hot(labels, num_classes).float()
    if attack == "idlg":
        return _lbfgs(model, params, targets, masks, x, None, onehot, iterations)
    return _inverting_gradients(model, params, targets, masks, x, onehot, iterations, box, tv)


def _lbfgs(
    model: nn.Module,
    params: dict[str, Tensor],
    targets: list[Tensor],
    masks: list[Tensor] | None,
    x: Tensor,
    y_logits: Tensor | None,
    onehot: Tensor | None,
    iterations: int,
) -> Reconstruction:
    variables = [x] + ([y_logits] if y_logits is not None else [])
    opt = torch.optim.LBFGS(variables, lr=1.0, line_search_fn="strong_wolfe")
    last = [float("nan")]

    def closure() -> Tensor:
        opt.zero_grad()
        target = F.softmax(y_logits, -1) if y_logits is not None else onehot
        assert target is not None
        grads = _masked(_grads(model, params, x, target), masks)
        diff = sum(((gd - gt) ** 2).sum() for gd, gt in zip(grads, targets))
        assert isinstance(diff, Tensor)
        diff.backward()
        last[0] = float(diff.detach())
        return diff

    best, best_x = float("inf"), x.detach().clone()
    for _ in range(iterations):
        opt.step(closure)
        if not (math.isfinite(last[0]) and bool(torch.isfinite(x).all())):
            break  # diverged: keep the best point so far
        if last[0] < best:
            best, best_x = last[0], x.detach().clone()
    labels = (y_logits if y_logits is not None else onehot).detach().argmax(-1)  # type: ignore[union-attr]
    return Reconstruction(best_x, labels, best)


def _inverting_gradients(
    model: nn.Module,
    params: dict[str, Tensor],
    targets: list[Tensor],
    masks: list[Tensor] | None,
    x: Tensor,
    onehot: Tensor,
    iterations: int,
    box: tuple[float, float],
    tv: float,
) -> Reconstruction:
    opt = torch.optim.Adam([x], lr=0.1)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    t_norm = torch.sqrt(sum((t * t).sum() for t in targets))  # type: ignore[arg-type]
    loss_v = float("nan")
    for _ in range(iterations):
        opt.zero_grad()
        grads = _masked(_grads(model, params, x, onehot), masks)
        dot = sum((gd * gt).sum() for gd, gt in zip(grads, targets))
        g_norm = torch.sqrt(sum((gd * gd).sum() for gd in grads))  # type: ignore[arg-type]
        loss = 1 - dot / (g_norm * t_norm + 1e-12) + tv * _tv(x)
        assert isinstance(loss, Tensor)
        loss.backward()
        assert x.grad is not None
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(box[0], box[1])
        loss_v = float(loss.detach())
    return Reconstruction(x.detach(), onehot.argmax(-1), loss_v)
