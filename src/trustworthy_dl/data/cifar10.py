"""CIFAR-10 (Krizhevsky 2009) from the "CIFAR-10 python version" batches.

Layout: ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta`` (https://www.cs.toronto.edu/~kriz/cifar.html). Each batch is a pickled dict with
``b"data"`` (uint8, (n, 3072): the red, green then blue 32x32 planes) and ``b"labels"`` (list of int).

Safety: a pickle is a program, and ``pickle.load`` runs whatever callable it names (``os.system``
included). The batches are therefore read with :class:`RestrictedUnpickler`: containers, strings,
bytes and numbers are built by pickle opcodes that call nothing, and the only callables it will
look up are the few numpy needs to rebuild an array (``_reconstruct``, ``_frombuffer``,
``ndarray``, ``dtype``) plus the latin-1 ``_codecs.encode`` that protocol-2 pickles use for bytes;
object dtypes are refused. Any other global makes the load fail with a :class:`DataError`.
The result is then checked for the expected keys, dtype and shape.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trustworthy_dl.data.paths import find_dataset_dir
from trustworthy_dl.data.registry import DatasetBundle, DatasetInfo, register_dataset
from trustworthy_dl.errors import DataError

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "RestrictedUnpickler", "load_cifar10", "safe_load_pickle"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_FILE = "test_batch"
_META_FILE = "batches.meta"
_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _checked_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype} is not allowed")
    return dtype


def _checked_frombuffer(buf: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"array dtype {dtype!r} is not allowed")
    return _FROMBUFFER(buf, dtype, shape, order)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol <= 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


# numpy moved these between versions (numpy.core -> numpy._core); take them from a live array.
_RECONSTRUCT: Any = np.arange(2).__reduce_ex__(2)[0]
_FROMBUFFER: Any = np.arange(2).__reduce_ex__(5)[0]

_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _checked_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allow-listed numpy globals (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler`; any failure is a :class:`DataError`."""
    path = Path(path)
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # nothing can run, so any failure just means a malformed file
        raise DataError(f"{path}: not a plain CIFAR-10 batch pickle ({err}); refusing to load it") from None


def _key(d: dict[Any, Any], name: str, path: Path) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise DataError(f"{path}: batch has no {name!r} entry (keys: {sorted(map(str, d))})")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    data, labels = _key(batch, "data", path), _key(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (n, 3072), got {type(data).__name__} {shape}"
        )
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must be a list of ints") from None
    if y.shape != (len(data),) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: need {len(data)} labels in 0..9, got shape {y.shape}")
    return data, y


def _normalise(data_N3072: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data_N3072.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _read_split(directory: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(directory / n) for n in names]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    return _normalise(data), torch.from_numpy(labels)


def _class_names(directory: Path) -> list[str] | None:
    path = directory / _META_FILE
    if not path.is_file():
        return None
    meta = safe_load_pickle(path)
    names = meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@register_dataset("cifar10", "cifar-10", info=DatasetInfo("image", (3, 32, 32), 10))
def load_cifar10(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-10: x float32 (n, 3, 32, 32) standardised per channel, y int64; 50000 / 10000."""
    directory = find_dataset_dir(
        "cifar10",
        [*_TRAIN_FILES, _TEST_FILE],
        root=cfg.root,
        subdirs=("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
        how_to_get=f"download {_URL} and extract it (it unpacks to cifar-10-batches-py/).",
    )
    x_train, y_train = _read_split(directory, _TRAIN_FILES)
    x_test, y_test = _read_split(directory, (_TEST_FILE,))
    return DatasetBundle(
        name="cifar10",
        kind="image",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=(3, 32, 32),
        meta={"root": str(directory.resolve()), "classes": _class_names(directory)},
    )
