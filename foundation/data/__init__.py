"""Datasets as tensors, cached as Parquet shards.

load_dataset is the entry point: it reads ``<root>/<name>/{train,test}`` from the Parquet
cache, building any missing split first from the dataset's raw source. The package is cut
along those seams:

- foundation.data.catalog: dataset names, shapes, normalization, Split/Dataset, DatasetError;
- foundation.data.sources: the raw sources (mnist1d generation, MNIST/Fashion-MNIST idx
  files, CIFAR-10 batches, the lazy torchvision download);
- foundation.data.cache: the Parquet shards (layout, metadata, atomic writes, checks).

Everything callers use is importable from here; validation_split and held_out carve a
deterministic validation set out of the training split.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from foundation.data.cache import CACHE_VERSION, METADATA_KEY, SHARD_ROWS, read_split, write_split
from foundation.data.catalog import (
    DATASETS,
    INPUT_SHAPES,
    NORMALIZATION,
    NUM_CLASSES,
    SPLITS,
    Dataset,
    DatasetError,
    RawSplit,
    Split,
)
from foundation.data.sources import build_raw

__all__ = [
    "CACHE_VERSION",
    "DATASETS",
    "INPUT_SHAPES",
    "METADATA_KEY",
    "NORMALIZATION",
    "NUM_CLASSES",
    "SHARD_ROWS",
    "SPLITS",
    "VALIDATION_SEED",
    "Dataset",
    "DatasetError",
    "RawSplit",
    "Split",
    "held_out",
    "load_dataset",
    "validation_split",
]


def load_dataset(name: str, root: str | os.PathLike[str], *, download: bool = True) -> Dataset:
    """Load a dataset from the Parquet cache under root, building the cache if needed.

    download only matters for the image datasets (mnist1d is generated locally): when their
    raw files are missing, True fetches them with torchvision and False raises DatasetError.
    """
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; valid names are {', '.join(DATASETS)}.")
    dataset_dir = Path(root) / name
    missing = [split for split in SPLITS if not (dataset_dir / split).is_dir()]
    if missing:
        raw = build_raw(name, Path(root), download=download)
        try:
            for split in missing:
                write_split(dataset_dir, split, name, raw[split])
        except OSError as exc:
            raise DatasetError(f"Cannot write the dataset cache in {dataset_dir} ({exc}).") from exc
    train, test = (read_split(dataset_dir / split, name) for split in SPLITS)
    return Dataset(name, train, test, INPUT_SHAPES[name], NUM_CLASSES)


def validation_split(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a deterministic validation set out of train; returns (train_rest, val)."""
    n = len(train.y)
    n_val = round(n * fraction)
    if not 0.0 < fraction < 1.0 or not 0 < n_val < n:
        raise ValueError(
            f"validation fraction must leave both parts non-empty, got {fraction} of {n} rows"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted indices keep the original row order inside each part: the seed decides only
    # membership, and the data stream does its own shuffling.
    val_idx, rest_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return _take(train, rest_idx), _take(train, val_idx)


VALIDATION_SEED = 0  # one split for every run, so runs selected on it are comparable


def held_out(data: Dataset, fraction: float) -> Dataset:
    """With fraction > 0, train on the rest of the training set and report on the held-out
    part where the test set would be: hyperparameters get chosen without seeing test."""
    if fraction <= 0:
        return data
    rest, val = validation_split(data.train, fraction, VALIDATION_SEED)
    return Dataset(data.name, rest, val, data.input_shape, data.num_classes)


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx], split.y[idx])
