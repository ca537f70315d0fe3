"""A small MLP regressor: 8 inputs to one real output."""

from __future__ import annotations

import torch
from torch import nn


class Regressor(nn.Module):
    """Wide Valley passes `input_shape` (from the data) because the constructor asks
    for it; `hidden` comes from model.kwargs."""

    def __init__(self, input_shape: tuple[int, ...], hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_shape[0], hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
