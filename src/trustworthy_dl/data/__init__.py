"""Datasets (digits, MNIST / Fashion-MNIST IDX, CIFAR-10 batches, text) and partitioning over nodes."""

# Importing each dataset module registers its loaders in DATASETS.
from trustworthy_dl.data import cifar10, digits, idx, text
from trustworthy_dl.data.partition import label_histogram, partition_bundle, partition_indices
from trustworthy_dl.data.registry import DATASETS, DatasetBundle, list_datasets, load_dataset
from trustworthy_dl.data.sampler import ShardSampler, derive_seed
from trustworthy_dl.data.tokenizer import get_tokenizer

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "ShardSampler",
    "cifar10",
    "derive_seed",
    "digits",
    "get_tokenizer",
    "idx",
    "label_histogram",
    "list_datasets",
    "load_dataset",
    "partition_bundle",
    "partition_indices",
    "text",
]
