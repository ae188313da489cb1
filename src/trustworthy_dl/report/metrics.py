"""``metrics.jsonl``: one JSON record per round, flushed as it is written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

__all__ = ["MetricsLog", "read_metrics"]


def _clean(obj: Any) -> Any:
    """Plain JSON: tensors to lists, non-finite floats to strings (JSON has no NaN)."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class MetricsLog:
    """Appends one record per round to ``path`` and keeps them in memory for the summary."""

    def __init__(self, path: Path | None, *, tensorboard: bool = False) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._fh: IO[str] | None = path.open("a", buffering=1) if path is not None else None
        self._tb: Any = None
        if tensorboard and path is not None:  # scalars also to path.parent / "tensorboard"
            from trustworthy_dl.report.tensorboard import TensorBoardSink

            self._tb = TensorBoardSink(path.parent / "tensorboard")

    @classmethod
    def in_dir(cls, out_dir: Path | None, *, tensorboard: bool = False) -> MetricsLog:
        """The log of a run writing into ``out_dir`` (kept in memory only when None)."""
        return cls(out_dir / "metrics.jsonl" if out_dir is not None else None, tensorboard=tensorboard)

    def write(self, record: dict[str, Any]) -> None:
        rec = _clean(record)
        self.records.append(rec)
        if self._fh is not None:
            self._fh.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            self._tb(rec)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl back (one dict per round)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
