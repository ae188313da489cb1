"""Text tokenizers: byte-level (vocabulary 256, no files) and GPT-2 BPE from local files.

GPT-2 (Radford et al. 2019) byte-level BPE is loaded with ``transformers`` from a directory that
holds ``vocab.json`` + ``merges.txt`` (or a ``tokenizer.json``); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trustworthy_dl.errors import ConfigError, DataError

__all__ = ["ByteTokenizer", "GPT2BPETokenizer", "Tokenizer", "get_tokenizer"]

_HUGE = 10**12  # model_max_length: we tokenize whole corpora, not model inputs


class Tokenizer(Protocol):
    """What the text datasets need from a tokenizer."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Text of the token ids (invalid byte sequences become U+FFFD)."""
        ...


def _as_list(ids: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in np.asarray(ids).reshape(-1)]


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, lossless, needs no files."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        return bytes(_as_list(ids)).decode("utf-8", errors="replace")


class GPT2BPETokenizer:
    """GPT-2 byte-level BPE read from local files through ``transformers``."""

    name = "gpt2"

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        directory = _check_tokenizer_dir(path)
        from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # lazy export

        try:
            self._tok: Any = GPT2TokenizerFast.from_pretrained(
                str(directory), local_files_only=True, model_max_length=_HUGE
            )
        except Exception as err:  # transformers raises many types for unreadable files
            raise DataError(f"cannot read the GPT-2 tokenizer files in {directory}: {err}") from None
        self.vocab_size = len(self._tok)
        self.path = directory

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        return str(self._tok.decode(_as_list(ids)))


def _check_tokenizer_dir(path: str | os.PathLike[str] | None) -> Path:
    how = (
        "data.tokenizer: gpt2 needs data.tokenizer_path set to a local directory holding the GPT-2 "
        "vocab.json and merges.txt (e.g. copied from https://huggingface.co/openai-community/gpt2); "
        "they are never downloaded. Or use data.tokenizer: byte."
    )
    if path is None:
        raise DataError(f"data.tokenizer_path is not set. {how}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise DataError(f"data.tokenizer_path {str(directory.resolve())!r} is not a directory. {how}")
    has_bpe = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    if not (has_bpe or (directory / "tokenizer.json").is_file()):
        raise DataError(
            f"{str(directory.resolve())!r} has no vocab.json + merges.txt (nor tokenizer.json). {how}"
        )
    return directory


def get_tokenizer(name: str, path: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer called ``name`` (``byte`` or ``gpt2``; gpt2 reads its files from ``path``)."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2BPETokenizer(path)
    raise ConfigError(f"unknown tokenizer {name!r}; valid: byte, gpt2")
