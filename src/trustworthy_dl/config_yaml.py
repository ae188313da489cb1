"""Reading YAML that a user wrote: configs, sweep cases, ``--set`` values.

Whatever the bytes, the answer is a plain value or a :class:`ConfigError` with one line naming the
file and the problem; never a traceback, and never work that grows with what the file makes up:

* the file must be UTF-8 text (a NUL byte or an invalid sequence is refused with its position) of
  at most :data:`MAX_BYTES`;
* one document (``---`` separating several is refused), not empty;
* YAML's safe subset: no ``!!python/...`` tags; no anchors and aliases (an alias bomb expands
  exponentially when the config is walked, and configs do not need them);
* a duplicate key in a mapping is refused (YAML would keep the last one silently);
* at most :data:`MAX_DEPTH` levels of nesting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from trustworthy_dl.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "load_yaml_text", "read_yaml"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 64


class _Problem(Exception):
    """A YAML construct the configs refuse (raised inside the loader, reported by the caller)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, deep nesting and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise _Problem(f"anchors and aliases are not supported (line {mark.line + 1})")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Problem(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
            event = self.peek_event()
            if getattr(event, "anchor", None):
                raise _Problem(f"anchors and aliases are not supported (line {event.start_mark.line + 1})")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise _Problem(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _one_line(err: yaml.YAMLError) -> str:
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    problem = ", ".join(p for p in parts if p) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}".replace("\n", " ")


def load_yaml_text(text: str, *, what: str) -> Any:
    """Parse ``text`` as one YAML document under the rules above; ``what`` names it in errors."""
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # its reader refuses unprintable characters already here
        return loader.get_single_data()
    except _Problem as err:
        raise ConfigError(f"{what}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(
    path: str | Path, *, what: str = "config file", holds: str = "a mapping of sections"
) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file as ``what``."""
    p = Path(path)
    name = f"{what} {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{name} not found")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"{name} cannot be read ({err.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{name} is {len(raw)} bytes; a config is at most {MAX_BYTES} bytes")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{name} is a binary file (NUL byte at offset {nul}), not YAML text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name} is not UTF-8 text (invalid byte at offset {err.start})") from None
    data = load_yaml_text(text, what=name)
    if data is None:  # nothing but whitespace and comments: a mistake, not "use the defaults"
        raise ConfigError(f"{name} is empty (it holds no YAML); give {holds}, or no file for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must hold {holds}, got {type(data).__name__}")
    return data
