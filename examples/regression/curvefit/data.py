"""Data the project makes itself: y = sin(2 x·w) + 0.1·noise for x ~ N(0, I) in 8 dimensions."""

from __future__ import annotations

import torch
from torch import Tensor


def make(
    samples: int = 2000, dims: int = 8, seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, test): 80 % / 20 % of `samples` rows, float32 inputs and targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, dims, generator=g)
    w = torch.randn(dims, generator=g) / dims**0.5
    y = torch.sin(2 * x @ w) + 0.1 * torch.randn(samples, generator=g)
    cut = samples * 4 // 5
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
