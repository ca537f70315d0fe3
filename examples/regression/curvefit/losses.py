"""The project's own loss: mean squared error, (outputs, targets) -> a scalar batch mean."""

from __future__ import annotations

from torch import Tensor


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    return ((outputs - targets) ** 2).mean()
