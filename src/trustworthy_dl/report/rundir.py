"""The run directory: resolved config, metrics.jsonl, summary.json and plots, never clobbered."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from trustworthy_dl.errors import ConfigError, DataError

__all__ = [
    "RUN_FILES",
    "RUN_OUTPUTS",
    "check_run_dir",
    "prepare_run_dir",
    "read_summary",
    "run_outputs",
    "write_json_atomic",
]

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


def check_run_dir(path: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is written, a path that is not a directory or holds a run."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output.dir {str(path)!r} exists and is not a directory")
    existing = [f for f in RUN_FILES if (path / f).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"output.dir {str(path)!r} already holds a run ({', '.join(existing)}); "
            "choose another --out or set output.overwrite=true"
        )


#: What a run writes besides config.yaml (engine/checkpoint.py's CHECKPOINT and its .tmp, and
#: report/weights.py's WEIGHTS_FILE, by name: this module is imported before torch is)
RUN_OUTPUTS = (
    "metrics.jsonl",
    "summary.json",
    "faults.jsonl",
    "checkpoint.pt",
    "checkpoint.tmp",
    "model.safetensors",
)


def run_outputs(path: Path) -> list[Path]:
    """The files of a run in ``path`` that exist: :data:`RUN_OUTPUTS` and set-aside metrics."""
    return [path / f for f in RUN_OUTPUTS if (path / f).exists()] + sorted(
        path.glob("metrics.interrupted-*.jsonl")
    )


def prepare_run_dir(path: Path, *, overwrite: bool, config: dict[str, Any]) -> Path:
    """Create ``path`` and write the resolved config; refuse to write over an earlier run."""
    check_run_dir(path, overwrite=overwrite)
    path.mkdir(parents=True, exist_ok=True)
    if overwrite:  # the earlier run's files, all of them: a stale checkpoint or fault log would be
        for f in run_outputs(path):  # resumed or reported as this run's
            f.unlink()
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file so a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json`` as a dict; a DataError naming the file when it is unreadable,
    not JSON (a run killed while writing it, an edited file) or not an object."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read this run summary ({err})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: cannot read this run summary: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: a run summary is a JSON object, this holds a {type(value).__name__}")
    return value
