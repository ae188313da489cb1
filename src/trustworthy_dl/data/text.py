"""Text corpora for next-token language modelling: ``text`` and ``tinyshakespeare``.

The token stream is cut into non-overlapping blocks of ``block_size + 1`` tokens; a block gives
``x = block[:-1]`` and ``y = block[1:]`` (shapes (n, L) with L = block_size). The last 10% of the
blocks (at least one) are the test set, so train and test never share text and the split does not
depend on the run seed.

Corpora: ``text`` reads every ``*.txt`` file of ``data.root`` in sorted order (or the file
``data.root`` names); with no root it uses the built-in corpus: the text of Python's
``pydoc_data.topics`` (the ``topics`` values in sorted-key order), which ships with CPython.
``tinyshakespeare`` (Karpathy's char-rnn corpus) finds ``tinyshakespeare/input.txt`` like the
image datasets find their folders (see :mod:`trustworthy_dl.data.paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trustworthy_dl.data.paths import find_dataset_dir
from trustworthy_dl.data.registry import DatasetBundle, DatasetInfo, register_dataset
from trustworthy_dl.data.tokenizer import get_tokenizer
from trustworthy_dl.errors import DataError

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig

__all__ = ["TEST_FRACTION", "default_corpus", "make_blocks", "read_text_files", "text_bundle"]

TEST_FRACTION = 0.1
_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def default_corpus() -> str:
    """The built-in corpus: CPython's ``pydoc_data.topics`` texts joined in sorted-key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise DataError(
            "the default text corpus (Python's pydoc_data.topics) is not installed with this Python; "
            "set data.root to a folder of .txt files instead"
        ) from None
    return "".join(topics[k] for k in sorted(topics))


def read_text_files(root: str | Path) -> tuple[str, list[Path]]:
    """Read ``root`` if it is a file, else every ``*.txt`` in it (sorted), joined by newlines."""
    path = Path(root).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"data.root {str(path.resolve())!r} holds no *.txt files; put the corpus there")
    else:
        raise DataError(
            f"data.root {str(path.resolve())!r} does not exist; point it at a .txt file or a folder of "
            "them, or leave it unset for the built-in corpus"
        )
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{f}: not UTF-8 text ({err})") from None
    return "\n".join(texts), files


def make_blocks(tokens: np.ndarray | torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a 1-D token stream into (x, y) of shape (n, block_size), y shifted by one token.

    Blocks of ``block_size + 1`` tokens do not overlap; the tail that fills no block is dropped.
    """
    t = torch.as_tensor(tokens, dtype=torch.int64).reshape(-1)
    n = len(t) // (block_size + 1)
    blocks_NL1 = t[: n * (block_size + 1)].view(n, block_size + 1)
    return blocks_NL1[:, :-1].contiguous(), blocks_NL1[:, 1:].contiguous()


def text_bundle(name: str, text: str, cfg: DataConfig, source: str) -> DatasetBundle:
    """Tokenize ``text`` with ``cfg.tokenizer`` and split its blocks into train / test."""
    tokenizer = get_tokenizer(cfg.tokenizer, cfg.tokenizer_path)
    tokens = tokenizer.encode(text)
    x, y = make_blocks(tokens, cfg.block_size)
    n = len(x)
    if n < 2:
        raise DataError(
            f"{source}: {len(tokens)} tokens make {n} block(s) of block_size+1={cfg.block_size + 1}; "
            "need at least 2 (one train, one test): use more text or a smaller data.block_size"
        )
    n_test = max(1, round(TEST_FRACTION * n))
    return DatasetBundle(
        name=name,
        kind="text",
        x_train=x[:-n_test],
        y_train=y[:-n_test],
        x_test=x[-n_test:],
        y_test=y[-n_test:],
        num_classes=tokenizer.vocab_size,
        input_shape=(cfg.block_size,),
        vocab_size=tokenizer.vocab_size,
        meta={"source": source, "tokenizer": tokenizer.name, "num_tokens": len(tokens)},
    )


@register_dataset("text", info=DatasetInfo("text", (), 50257))
def load_text(cfg: DataConfig) -> DatasetBundle:
    """``*.txt`` files under ``data.root``, or the built-in corpus when root is unset."""
    if cfg.root is None:
        return text_bundle("text", default_corpus(), cfg, "pydoc_data.topics")
    text, files = read_text_files(cfg.root)
    return text_bundle("text", text, cfg, ", ".join(str(f.resolve()) for f in files))


@register_dataset("tinyshakespeare", "tiny-shakespeare", "shakespeare", info=DatasetInfo("text", (), 50257))
def load_tinyshakespeare(cfg: DataConfig) -> DatasetBundle:
    """Tiny Shakespeare (1.1 MB, Karpathy's char-rnn corpus) from ``tinyshakespeare/input.txt``."""
    directory = find_dataset_dir(
        "tinyshakespeare",
        ["input.txt"],
        root=cfg.root,
        subdirs=("tinyshakespeare",),
        how_to_get=f"download {_SHAKESPEARE_URL} into a folder named tinyshakespeare/.",
    )
    path = directory / "input.txt"
    text, _ = read_text_files(path)
    return text_bundle("tinyshakespeare", text, cfg, str(path.resolve()))
