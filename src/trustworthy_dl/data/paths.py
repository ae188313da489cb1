"""Where dataset files are looked for, and the error that says so when they are not found.

Root resolution: if ``data.root`` is set, only that directory is searched. Otherwise the
candidates are ``$TDL_DATA_ROOT``, ``./data`` and ``../shared/data`` (relative to the working
directory), in that order. In each candidate a dataset is looked for in its own sub-folder
(``<root>/mnist``) and in the candidate itself (a root that points straight at the files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trustworthy_dl.errors import DataError

__all__ = ["ENV_VAR", "candidate_roots", "find_dataset_dir", "find_file"]

ENV_VAR = "TDL_DATA_ROOT"
_DEFAULT_ROOTS = ("data", "../shared/data")

# A required file given as a tuple of acceptable names (e.g. gzip-compressed or not).
FileSpec = str | tuple[str, ...]


def candidate_roots(root: str | os.PathLike[str] | None) -> list[Path]:
    """The directories searched for datasets, in order (see the module docstring)."""
    if root is not None:
        return [Path(root).expanduser()]
    roots: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(Path(r) for r in _DEFAULT_ROOTS)
    return roots


def _names(spec: FileSpec) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) else spec


def find_file(directory: Path, spec: FileSpec) -> Path | None:
    """The first of the acceptable names in ``spec`` that is a file in ``directory``."""
    for name in _names(spec):
        path = directory / name
        if path.is_file():
            return path
    return None


def find_dataset_dir(
    dataset: str,
    files: Sequence[FileSpec],
    *,
    root: str | os.PathLike[str] | None,
    subdirs: Sequence[str],
    how_to_get: str,
) -> Path:
    """Return the first directory that holds every file in ``files``.

    Args:
        dataset: name shown in the error message.
        files: required files; a tuple entry lists alternative names for one file.
        root: ``data.root`` from the config (None: search the default roots).
        subdirs: sub-folders of a root the dataset may live in, tried before the root itself.
        how_to_get: one or two sentences telling the user where the files come from.

    Raises:
        DataError: naming every directory looked in, what was missing there, and ``how_to_get``.
    """
    tried: list[str] = []
    for base in candidate_roots(root):
        for directory in [*(base / s for s in subdirs), base]:
            if not directory.is_dir():
                tried.append(f"{directory.resolve()} (no such directory)")
                continue
            missing = [_names(f)[0] for f in files if find_file(directory, f) is None]
            if not missing:
                return directory
            tried.append(f"{directory.resolve()} (missing {', '.join(missing)})")
    wanted = ", ".join(_names(f)[0] for f in files)
    where = (
        "data.root is set, so only it was searched"
        if root is not None
        else f"data.root is not set, so ${ENV_VAR}, ./data and ../shared/data were searched"
    )
    raise DataError(
        f"dataset {dataset!r} not found: need {wanted}; {where}. Looked in:\n  "
        + "\n  ".join(tried)
        + f"\nTo get it: {how_to_get} Then set data.root (or ${ENV_VAR}) to the folder holding it."
    )
