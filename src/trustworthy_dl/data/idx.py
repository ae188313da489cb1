"""MNIST and Fashion-MNIST from the original IDX files (gzip-compressed or not).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero
bytes, a type code byte (0x08 = uint8, ...), the number of dimensions, then one uint32 per
dimension, then the data in row-major order. Parsing is one ``numpy.frombuffer``; a truncated,
corrupt or mislabelled file is a :class:`DataError` naming the file.

Files are looked for in ``<root>/mnist/`` or ``<root>/fashion-mnist/`` (or ``root`` itself),
see :mod:`trustworthy_dl.data.paths`.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trustworthy_dl.data.paths import find_dataset_dir, find_file
from trustworthy_dl.data.registry import DatasetBundle, DatasetInfo, register_dataset
from trustworthy_dl.errors import DataError

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig

__all__ = ["load_idx_dataset", "read_idx"]

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_SPLITS = {"train": "train", "test": "t10k"}

# name -> (sub-folder, pixel mean, pixel std on [0, 1] (the usual training-set figures), download page)
_DATASETS = {
    "mnist": ("mnist", 0.1307, 0.3081, "http://yann.lecun.com/exdb/mnist/ (or any mirror of the four files)"),
    "fashion-mnist": (
        "fashion-mnist",
        0.2860,
        0.3530,
        "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
    ),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array of its stored shape and type.

    Raises:
        DataError: if the file is not valid gzip, has a bad magic number or is truncated.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, header needs {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX size mismatch: header says shape {dims} ({expected} bytes) but the file "
            f"holds {len(raw)} bytes; it is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_split(directory: Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _SPLITS[split]
    img_path = find_file(directory, _spec(f"{prefix}-images-idx3-ubyte"))
    lbl_path = find_file(directory, _spec(f"{prefix}-labels-idx1-ubyte"))
    assert img_path is not None and lbl_path is not None  # find_dataset_dir checked
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{img_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected uint8 labels of shape (n,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{name} {split}: {len(images)} images but {len(labels)} labels in {directory}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: labels must be 0..9, found {int(labels.max())}")
    return images, labels


def _spec(stem: str) -> tuple[str, str]:
    return (f"{stem}.gz", stem)


def _normalise(images_NHW: np.ndarray, mean: float, std: float) -> torch.Tensor:
    # One uint8 -> float32 copy (frombuffer arrays are read-only), then in place: no temporaries.
    x = torch.from_numpy(images_NHW.astype(np.float32)).unsqueeze(1)
    return x.div_(255.0).sub_(mean).div_(std)


def load_idx_dataset(name: str, cfg: DataConfig) -> DatasetBundle:
    """Load ``mnist`` or ``fashion-mnist``: x float32 (n, 1, 28, 28) standardised, y int64."""
    subdir, mean, std, url = _DATASETS[name]
    files = [
        _spec(f"{p}-{kind}") for p in _SPLITS.values() for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    directory = find_dataset_dir(
        name,
        files,
        root=cfg.root,
        subdirs=(subdir,),
        how_to_get=f"download the four IDX .gz files from {url} into a folder named {subdir}/.",
    )
    x_train, y_train = _read_split(directory, "train", name)
    x_test, y_test = _read_split(directory, "test", name)
    return DatasetBundle(
        name=name,
        kind="image",
        x_train=_normalise(x_train, mean, std),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=_normalise(x_test, mean, std),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=10,
        input_shape=(1, 28, 28),
        meta={"root": str(directory.resolve()), "mean": mean, "std": std},
    )


@register_dataset("mnist", info=DatasetInfo("image", (1, 28, 28), 10))
def load_mnist(cfg: DataConfig) -> DatasetBundle:
    """MNIST handwritten digits: 60000 train / 10000 test, 10 classes."""
    return load_idx_dataset("mnist", cfg)


@register_dataset(
    "fashion-mnist", "fashion_mnist", "fashionmnist", info=DatasetInfo("image", (1, 28, 28), 10)
)
def load_fashion_mnist(cfg: DataConfig) -> DatasetBundle:
    """Fashion-MNIST (Xiao et al. 2017): 60000 train / 10000 test, 10 clothing classes."""
    return load_idx_dataset("fashion-mnist", cfg)
