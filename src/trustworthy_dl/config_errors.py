"""Pydantic's validation errors as the one-line config error the user sees."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["format_validation_error"]


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line naming every field pydantic refused, its value and (for unknown keys) the valid ones."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        path = ".".join(loc) or "<root>"
        if e["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"{path}: unknown key; valid keys here: {valid}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {_short(value)})"
        lines.append(f"{path}: {msg}{shown}".replace("\n", " "))
    return "invalid config: " + "; ".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_at(root: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The section model at ``path`` (list items included: ``faults.0`` is a FaultConfig)."""
    model = root
    keys = list(path)
    while keys:
        field = model.model_fields.get(keys.pop(0))
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) in (list, tuple) and keys and keys[0].isdigit():
            keys.pop(0)  # an item of a list of sections
            ann = (typing.get_args(ann) or (None,))[0]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
