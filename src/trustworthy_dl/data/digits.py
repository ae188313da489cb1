"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set): 1797 images, 10 classes.

Ships with scikit-learn, so it needs no download: the default dataset for quick runs and tests.
The 80/20 train/test split is stratified by class and drawn from a fixed seed
(:data:`SPLIT_SEED`), independent of the run seed, so the test set is the same in every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from trustworthy_dl.data.registry import DatasetBundle, DatasetInfo, register_dataset

if TYPE_CHECKING:
    from trustworthy_dl.config import DataConfig

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "load_digits", "stratified_split"]

SPLIT_SEED = 20240601
TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, put ``round(test_fraction * count)`` random samples in the test set.

    Returns sorted train and test index arrays (original order kept within each split).
    """
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = round(test_fraction * len(idx))
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


@register_dataset("digits", "sklearn-digits", info=DatasetInfo("image", (1, 8, 8), 10))
def load_digits(cfg: DataConfig) -> DatasetBundle:
    """Digits as x float32 (n, 1, 8, 8), standardised with the train mean/std, and y int64."""
    from sklearn.datasets import load_digits as _sk_load_digits

    images, labels = _sk_load_digits(return_X_y=True)
    x = images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    y = labels.astype(np.int64)
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std())
    x = (x - mean) / std
    return DatasetBundle(
        name="digits",
        kind="image",
        x_train=torch.from_numpy(x[train_idx]),
        y_train=torch.from_numpy(y[train_idx]),
        x_test=torch.from_numpy(x[test_idx]),
        y_test=torch.from_numpy(y[test_idx]),
        num_classes=10,
        input_shape=(1, 8, 8),
        meta={"mean": mean, "std": std, "split_seed": SPLIT_SEED},
    )
