"""What every part of foundation.data agrees on: the datasets, their shapes, the types.

The dataset names, splits, input shapes, normalization and class count, the Split and
Dataset containers, DatasetError, and RawSplit (one split before normalization, as the
raw sources produce it and the Parquet cache stores it). It sits below both
foundation.data.sources and foundation.data.cache so neither has to import the other
or the package itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from foundation.errors import WideValleyError
from foundation.part_names import DATASETS as DATASETS  # the package re-exports it

SPLITS: tuple[str, ...] = ("train", "test")

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist1d": (40,),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
# The usual per-channel (mean, std) of the training pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
NUM_CLASSES = 10  # all four datasets have ten classes


class DatasetError(WideValleyError, ValueError):
    """A dataset cannot be loaded; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    """Inputs [N, *input_shape] (float32 for the built-in data sets, already normalized)."""
    y: torch.Tensor
    """Targets [N, ...]: int64 class labels for classification, any dtype otherwise."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int | None
    """Classes when the targets are integer labels; None for other targets (regression)."""


# Raw data of one split before normalization: x [N, prod(input_shape)], y int64 [N].
RawSplit = tuple[np.ndarray, np.ndarray]
