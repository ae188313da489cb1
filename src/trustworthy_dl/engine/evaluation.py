"""The coordinator's evaluation of the current model on the test split (every layout)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trustworthy_dl.engine.task import evaluate

if TYPE_CHECKING:
    from torch import nn

    from trustworthy_dl.engine.setup import Experiment

__all__ = ["eval_record"]


def eval_record(exp: Experiment, model: nn.Module | None = None) -> dict[str, Any]:
    """test_loss, test_accuracy, test_perplexity (language models) and, under a backdoor attack,
    test_backdoor_success: the fraction of triggered test inputs the model sends to the target."""
    model = exp.flat.model if model is None else model
    ev = evaluate(model, exp.task, exp.data.x_test, exp.data.y_test)
    rec: dict[str, Any] = {"test_loss": ev.loss, "test_accuracy": ev.accuracy}
    if ev.perplexity is not None:
        rec["test_perplexity"] = ev.perplexity
    if exp.adversary.name == "backdoor":
        from trustworthy_dl.attacks.backdoor import Backdoor, backdoor_success_rate

        attack = exp.adversary.attack
        assert isinstance(attack, Backdoor)
        rec["test_backdoor_success"] = backdoor_success_rate(model, exp.data.x_test, exp.data.y_test, attack)
    return rec
