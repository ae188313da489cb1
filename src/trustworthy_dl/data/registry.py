"""Dataset registry and the in-memory bundle every dataset loads into."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

from trustworthy_dl.registry import Registry

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig

__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "WEB_CORPORA",
    "DatasetBundle",
    "DatasetInfo",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

#: Web-scale corpora the seed's examples name: not bundled, their text is read through ``text``.
WEB_CORPORA = ("openwebtext", "wikitext-103", "c4")


@dataclass
class DatasetBundle:
    """A dataset held in memory as tensors.

    Images: ``x`` float32 (n, C, H, W), normalised; ``y`` int64 (n,).
    Text: ``x`` int64 (n, L) token ids, ``y`` int64 (n, L) next-token targets.
    """

    name: str
    kind: Literal["image", "text"]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    vocab_size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> Tensor | None:
        """Class labels used by label-skew partitioning (None for text)."""
        return self.y_train if self.kind == "image" else None


DatasetLoader = Callable[["DataConfig"], DatasetBundle]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is before it is loaded (validation checks a config against it).

    ``shape``: one sample's input shape (images: C, H, W; text: () -- the block size decides);
    ``classes``: labels (images) or the largest vocabulary its tokenizers produce (text)."""

    kind: Literal["image", "text"]
    shape: tuple[int, ...]
    classes: int


#: Canonical dataset name -> :class:`DatasetInfo`.
DATASET_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, *aliases: str, info: DatasetInfo) -> Callable[[DatasetLoader], DatasetLoader]:
    DATASET_INFO[name] = info
    return DATASETS.register(name, *aliases)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load the dataset named by ``cfg.name`` (raises DataError if its files are missing)."""
    bundle = DATASETS.get(cfg.name)(cfg)
    if cfg.max_train_samples is not None:
        bundle.x_train, bundle.y_train = (
            bundle.x_train[: cfg.max_train_samples],
            bundle.y_train[: cfg.max_train_samples],
        )
    if cfg.max_test_samples is not None:
        bundle.x_test, bundle.y_test = (
            bundle.x_test[: cfg.max_test_samples],
            bundle.y_test[: cfg.max_test_samples],
        )
    return bundle
