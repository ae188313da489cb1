"""Datasets (digits, MNIST / Fashion-MNIST IDX, CIFAR-10 batches, text) and partitioning over nodes."""

from trustworthy_dl.data.registry import DATASETS, DatasetBundle, list_datasets, load_dataset

__all__ = ["DATASETS", "DatasetBundle", "list_datasets", "load_dataset"]
