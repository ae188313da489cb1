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

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._fh: IO[str] | None = path.open("a", buffering=1) if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        rec = _clean(record)
        self.records.append(rec)
        if self._fh is not None:
            self._fh.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl back (one dict per round)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
