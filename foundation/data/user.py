"""A user's data as a Dataset: (inputs, targets) tensor pairs or map-style torch Datasets.

A user data callable (data.dataset = "pkg.module:load") returns (train, test); each may
be an (inputs, targets) pair of tensors or numpy arrays, or a map-style torch Dataset
whose items are (input, target) pairs (it is read once, item by item, into tensors: the
replicas draw minibatches from tensors). Integer targets are class labels (num_classes =
the largest label + 1); any other targets are regression targets (num_classes = None).
Every check fails with a DatasetError naming the key and what was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foundation.data.catalog import Dataset, DatasetError, Split

READ_CHUNK = 1024  # items collated at once when a Dataset is read into tensors
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise DatasetError(f"{what} must be a tensor or a numpy array, got {type(value).__name__}")


def _from_dataset(dataset: Any, what: str) -> tuple[Tensor, Tensor]:
    """Read a map-style Dataset's (input, target) items into two stacked tensors."""
    from torch.utils.data import default_collate

    n = len(dataset)
    xs, ys = [], []
    for start in range(0, n, READ_CHUNK):
        items = [dataset[i] for i in range(start, min(start + READ_CHUNK, n))]
        if not all(isinstance(it, Sequence) and len(it) == 2 for it in items):
            raise DatasetError(f"{what}: a Dataset's items must be (input, target) pairs")
        x, y = default_collate(items)
        xs.append(_tensor(x, f"{what} inputs"))
        ys.append(_tensor(y, f"{what} targets"))
    return torch.cat(xs), torch.cat(ys)


def as_split(value: Any, what: str) -> Split:
    """An (inputs, targets) pair or a map-style Dataset as a Split, checked."""
    if isinstance(value, tuple | list) and len(value) == 2:
        x, y = _tensor(value[0], f"{what} inputs"), _tensor(value[1], f"{what} targets")
    elif hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        x, y = _from_dataset(value, what)
    else:
        raise DatasetError(
            f"{what} must be an (inputs, targets) pair or a map-style torch Dataset, "
            f"got {type(value).__name__}"
        )
    if len(x) == 0 or len(x) != len(y):
        raise DatasetError(f"{what} has {len(x)} inputs and {len(y)} targets")
    if not x.is_floating_point():
        raise DatasetError(f"{what} inputs must be floating point, got {x.dtype}")
    if not y.is_floating_point() and y.dtype not in LABEL_DTYPES:
        raise DatasetError(f"{what} targets must be numbers, got {y.dtype}")
    if not y.is_floating_point():
        y = y.long()
        if int(y.min()) < 0:
            raise DatasetError(f"{what} targets are integer labels but some are negative")
    return Split(x.contiguous(), y.contiguous())


def as_dataset(name: str, loaded: Any, what: str) -> Dataset:
    """(train, test) from a user data callable (or the API) as a checked Dataset."""
    if not isinstance(loaded, tuple | list) or len(loaded) != 2:
        raise DatasetError(f"{what} must return (train, test), got {type(loaded).__name__}")
    train, test = as_split(loaded[0], f"{what} train"), as_split(loaded[1], f"{what} test")
    if train.x.shape[1:] != test.x.shape[1:] or train.y.shape[1:] != test.y.shape[1:]:
        raise DatasetError(
            f"{what}: train and test differ in shape: inputs {tuple(train.x.shape[1:])} vs "
            f"{tuple(test.x.shape[1:])}, targets {tuple(train.y.shape[1:])} vs "
            f"{tuple(test.y.shape[1:])}"
        )
    if train.y.is_floating_point() != test.y.is_floating_point():
        raise DatasetError(f"{what}: train and test targets must both be labels or both not")
    classes = None
    if not train.y.is_floating_point():
        classes = int(max(int(train.y.max()), int(test.y.max()))) + 1
    return Dataset(name, train, test, tuple(train.x.shape[1:]), classes)
