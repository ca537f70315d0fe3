"""MNIST-1D (generated offline by the mnist1d package) as sequences: 40 values read
`step` at a time, so a signal is [40 / step, step]."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor


@functools.cache
def _mnist1d() -> dict[str, Any]:
    """Generated once per process (it takes seconds), however many replicas ask."""
    import mnist1d.data

    made: dict[str, Any] = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    return made


def load(
    train_size: int = 4000, step: int = 4
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, test), each (inputs [N, 40 / step, step] float32, labels [N] int64). Runs
    on the replicas' nodes: Wide Valley calls it there, with data.kwargs from the config."""
    data = _mnist1d()
    x = torch.as_tensor(data["x"], dtype=torch.float32)[:train_size]
    x = x.reshape(len(x), -1, step)
    y = torch.as_tensor(data["y"], dtype=torch.int64)[:train_size]
    x_test = torch.as_tensor(data["x_test"], dtype=torch.float32)
    x_test = x_test.reshape(len(x_test), -1, step)
    y_test = torch.as_tensor(data["y_test"], dtype=torch.int64)
    return (x, y), (x_test, y_test)
