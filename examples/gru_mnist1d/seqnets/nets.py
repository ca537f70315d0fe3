"""A GRU that reads an MNIST-1D signal as a sequence (40 values in steps of a few)."""

from __future__ import annotations

import torch
from torch import nn


class GRUClassifier(nn.Module):
    """GRU over the sequence, then a linear layer on the last hidden state.

    Wide Valley passes `input_shape` ([steps, features per step]) and `num_classes` (from
    the data's labels) because the constructor asks for them; `hidden` and `layers`
    come from model.kwargs in the config.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, layers: int = 1
    ) -> None:
        super().__init__()
        features = input_shape[-1]
        self.gru = nn.GRU(features, hidden_size=hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(x)  # x: [batch, steps, features]; last: [layers, batch, hidden]
        return self.head(last[-1])
