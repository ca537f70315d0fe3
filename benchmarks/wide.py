"""A wide MLP for benchmarks that need a long all-reduce next to a short local step
(benchmarks/chaos_collective.py): `model.arch = "benchmarks.wide:wide_mlp"`."""

from __future__ import annotations

from torch import nn


def wide_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 1024) -> nn.Module:
    inputs = 1
    for size in input_shape:
        inputs *= size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
        nn.ReLU(), nn.Linear(hidden, num_classes),
    )  # fmt: skip
