"""TensorBoard scalars of a run (``output.tensorboard: true``): ``OUT/tensorboard/``.

One scalar per figure and round, step = round: train/loss, test/accuracy, test/loss,
test/perplexity, test/backdoor_success, trust/node_<i>, detection/{flagged,confirmed,quarantined,active},
time/<phase> (seconds), privacy/epsilon, optim/{lr,update_norm,param_norm}. Written with
``torch.utils.tensorboard.SummaryWriter``; view with ``tensorboard --logdir OUT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TensorBoardSink", "record_scalars"]

_PLAIN = {
    "loss": "train/loss",
    "test_accuracy": "test/accuracy",
    "test_loss": "test/loss",
    "test_perplexity": "test/perplexity",
    "test_backdoor_success": "test/backdoor_success",
    "lr": "optim/lr",
    "update_norm": "optim/update_norm",
    "param_norm": "optim/param_norm",
    "num_active": "detection/active",
    "epsilon": "privacy/epsilon",
}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, by TensorBoard tag."""
    out: dict[str, float] = {}
    for key, tag in _PLAIN.items():
        v = _num(record.get(key))
        if v is not None:
            out[tag] = v
    priv = record.get("privacy")
    if isinstance(priv, dict) and _num(priv.get("epsilon")) is not None:
        out["privacy/epsilon"] = float(priv["epsilon"])
    for i, t in enumerate(record.get("trust") or []):
        if _num(t) is not None:
            out[f"trust/node_{i}"] = float(t)
    sec = record.get("security")
    if isinstance(sec, dict):
        for k in ("flagged", "confirmed"):
            if isinstance(sec.get(k), list):
                out[f"detection/{k}"] = float(len(sec[k]))
    if isinstance(record.get("quarantined"), list):
        out["detection/quarantined"] = float(len(record["quarantined"]))
    for phase, s in (record.get("time") or {}).items():
        if _num(s) is not None:
            out[f"time/{phase}"] = float(s)
    return out


class TensorBoardSink:
    """Writes each record's scalars to ``log_dir`` as it is logged."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record.get("round", 0))
        for tag, v in record_scalars(record).items():
            self.writer.add_scalar(tag, v, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
