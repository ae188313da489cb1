"""The user's own ``nn.Module`` and dataset in ``DistributedTrainer.train`` (as opacus wraps yours).

    trainer.train(model=my_net, dataset=TensorDataset(x, y), test_dataset=TensorDataset(xt, yt))

For the one run they are registered under ``user-<classname>`` names (removed afterwards), so
everything else (nodes, attacks, defences, summary) works as for a built-in model and dataset:

* the model: every node and the coordinator start from a deep copy of the module as given (its
  current weights; the run seed does not re-initialise it);
* the dataset: a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs (a ``TensorDataset`` is used as
  is; any other is read once, item by item, and stacked in memory) or an ``(x, y)`` tuple of
  tensors. Float ``x`` with integer labels ``y`` of shape (n,) is a classification task; integer
  ``x`` and ``y`` of shape (n, L) is next-token prediction. Without ``test_dataset`` a seeded 10%
  of the samples is held out for testing (the summary's ``data_note`` says so).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trustworthy_dl.errors import ConfigError

__all__ = ["user_components"]


def _tensors(data: Any, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(f"{what}: a Dataset with a length (map-style) is needed") from None
        if n == 0:
            raise ConfigError(f"{what} is empty")
        items = [data[i] for i in range(n)]
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items[:1]):
            raise ConfigError(f"{what}: each item must be an (x, y) pair, got {type(items[0]).__name__}")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise ConfigError(
            f"{what} must be a torch Dataset of (x, y) pairs or an (x, y) tuple of tensors, got {type(data).__name__}"
        )
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(
            f"{what}: x has {x.shape[0]} samples and y {y.shape[0]}; they must match and be > 0"
        )
    return x, y


def _bundle(train: Any, test: Any, name: str, seed: int) -> Any:
    from trustworthy_dl.data.registry import DatasetBundle

    x, y = _tensors(train, "dataset")
    note = None
    if test is None:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(x.shape[0], generator=g)
        k = max(1, x.shape[0] // 10)
        xt, yt, x, y = x[perm[:k]], y[perm[:k]], x[perm[k:]], y[perm[k:]]
        note = f"no test_dataset given: {k} of {k + x.shape[0]} samples (a seeded 10%) held out for testing"
    else:
        xt, yt = _tensors(test, "test_dataset")
    kind: Literal["image", "text"]
    if x.is_floating_point() and not y.is_floating_point() and y.dim() == 1:
        kind, classes, vocab = "image", int(max(int(y.max()), int(yt.max())) + 1), None
        x, xt = x.float(), xt.float()
    elif not x.is_floating_point() and not y.is_floating_point() and x.dim() == 2 and x.shape == y.shape:
        kind, vocab = "text", int(max(int(x.max()), int(y.max()), int(xt.max()), int(yt.max())) + 1)
        classes = vocab
    else:
        raise ConfigError(
            "dataset: float x with integer labels y of shape (n,) (classification) or integer x and y of "
            f"shape (n, L) (next-token prediction) are supported; got x {tuple(x.shape)} {x.dtype}, "
            f"y {tuple(y.shape)} {y.dtype}"
        )
    if xt.shape[1:] != x.shape[1:]:
        raise ConfigError(
            f"test_dataset samples have shape {tuple(xt.shape[1:])}, training ones {tuple(x.shape[1:])}"
        )
    meta = {"note": note} if note else {}
    return DatasetBundle(name, kind, x, y.long(), xt, yt.long(), classes, tuple(x.shape[1:]), vocab, meta)


def _name(prefix: str, obj: Any) -> str:
    return f"{prefix}-" + re.sub(r"[^a-z0-9]+", "-", type(obj).__name__.lower()).strip("-")


@contextmanager
def user_components(
    model: nn.Module | None, dataset: Any, test_dataset: Any = None, *, seed: int = 0
) -> Iterator[dict[str, str]]:
    """Register the user's model and/or dataset for one run; yields the dotted overrides naming them."""
    from trustworthy_dl.data.registry import DATASET_INFO, DATASETS, DatasetInfo
    from trustworthy_dl.models.registry import MODELS, ModelSpec

    names: dict[str, str] = {}
    added: list[tuple[Any, str]] = []
    try:
        kind: Literal["image", "text"] = "image"
        if dataset is not None and not isinstance(dataset, str):
            bundle = _bundle(dataset, test_dataset, _name("user", dataset), seed)
            kind = bundle.kind
            DATASETS.unregister(bundle.name)
            DATASETS.register(bundle.name)(lambda cfg, b=bundle: b)  # type: ignore[misc]
            DATASET_INFO[bundle.name] = DatasetInfo(
                bundle.kind, bundle.input_shape if kind == "image" else (), bundle.num_classes
            )
            added.append((DATASETS, bundle.name))
            names["data.name"] = bundle.name
        elif test_dataset is not None:
            raise ConfigError("test_dataset goes with a dataset object (not a registered dataset name)")
        if model is not None:
            if not isinstance(model, nn.Module):
                raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
            name = _name("user", model)
            template = copy.deepcopy(model).cpu()
            MODELS.unregister(name)
            MODELS.register(name)(
                ModelSpec(lambda **kw: copy.deepcopy(template), ("default",), kind, "default")
            )  # type: ignore[arg-type]
            added.append((MODELS, name))
            names["model.name"] = name
        yield names
    finally:
        for registry, name in added:
            registry.unregister(name)
            if registry is DATASETS:
                DATASET_INFO.pop(name, None)
