"""The base of every config section: strict types, finite floats, bounded integers."""

from __future__ import annotations

import contextlib
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["MAX_INT"]


#: Upper bound of integer settings that have no tighter one of their own.
MAX_INT = 10**9


class _Section(BaseModel):
    """A config section. Strict: a boolean must be a boolean and an integer an integer (no ``true``
    as 1, no 8.5 as 8, no 0 as false); floats must be finite; a numeric string such as ``5e-5``
    (YAML 1.1 reads it as text) is accepted for a float field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numeric_strings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not isinstance(value, str):
                continue
            ann = field.annotation
            if ann is float or float in get_args(ann):
                with contextlib.suppress(ValueError):  # not a number: the schema reports it
                    out[name] = float(value.strip())
        return out

    @model_validator(mode="after")
    def _int_bounds(self) -> Any:
        """Every integer without its own upper bound is at most MAX_INT (no run needs more; a
        larger one is a typo that would otherwise allocate or loop without end)."""
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            has_le = any(hasattr(m, "le") or hasattr(m, "lt") for m in field.metadata)
            if isinstance(value, int) and not isinstance(value, bool) and not has_le and value > MAX_INT:
                raise ValueError(f"{name}={value} is larger than {MAX_INT:.0e}")
        return self
