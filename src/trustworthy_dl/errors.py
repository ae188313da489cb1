"""User-facing errors.

Every error a user can cause (a bad config, a missing dataset, a malformed message from a node)
is a :class:`TdlError`. The CLI prints its message and exits with status 2; no traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "NodeMessageError", "TdlError", "UnknownNameError"]


class TdlError(ValueError):
    """Base class of errors caused by the user's input; the message says what and where."""


class ConfigError(TdlError):
    """A config field has an unknown key, a wrong type or an out-of-range value."""


class DataError(TdlError):
    """A dataset is missing or malformed."""


class NodeMessageError(TdlError):
    """A tensor received from a node has the wrong shape, dtype or size."""


class UnknownNameError(TdlError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: object, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
