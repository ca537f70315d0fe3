"""Deliberately bad user parts, named by import path in docs/reliability.md's bad-input
table (tests.badparts:...): each must fail before any replica starts, with one line
(raising_loss too, when the input checks run; a test calls driver.run without them)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NOT_CALLABLE = 42


def raising_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise ValueError("hidden must be positive")


def frozen_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = nn.Linear(input_shape[0], num_classes)
    model.requires_grad_(False)
    return model


def ragged_data() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    return (torch.randn(10, 4), torch.zeros(9, dtype=torch.long)), (
        torch.randn(5, 4), torch.zeros(5, dtype=torch.long),
    )  # fmt: skip


def integer_inputs() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    x = torch.arange(40).reshape(10, 4)
    return (x, torch.zeros(10, dtype=torch.long)), (x, torch.zeros(10, dtype=torch.long))


def per_sample_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


class TinyGRU(nn.Module):
    """A recurrent model: torch.func.vmap has no batching rule for GRU, so it cannot be
    packed."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.gru = nn.GRU(1, 8, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(x.unsqueeze(-1))[1][-1])


def raising_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """A loss that fails in the replicas (for driver.run called without the input checks,
    tests/localray/test_coordinator_here.py)."""
    raise ValueError("the loss refuses")


class TupleModel(nn.Module):
    """Returns (logits, features), as many models do: Wide Valley needs one tensor."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_shape[0], num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(x), x
