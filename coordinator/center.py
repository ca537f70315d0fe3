"""The center and what each algorithm does with it, once per round, in the coordinator.

rsgd, parle: the center is the replicas' mean w̄, sent back for the pull.
sgd: the mean is formed (it is the reported model) but nothing is sent.
easgd: an explicit w̃ with its own dynamics: the coordinator applies its half of the
exchange, w̃ ← w̃ + α Σ_a (w^a − w̃), and sends the OLD w̃, toward which each replica
applies its own half next round (both halves read the same w̃).
The formulas are flatmath.coupling's; docs/algorithms.md states them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from flatmath import coupling

COUPLED = ("rsgd", "parle")  # the replicas pull toward the mean of the last round


class CenterRule:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value: Tensor | None = None
        self.sent: np.ndarray | None = None
        """What the replicas pull toward next round (None: nothing to pull toward)."""

    def update(self, weights: list[Tensor], alpha: float, num_params: int) -> Tensor:
        """The new center from this round's weights (α = ηγ is EASGD's exchange rate);
        returns ‖w^a − center‖ for each replica."""
        if self.kind == "easgd":
            if self.value is None:  # w̃ starts at the replicas' mean
                self.value = coupling.center(weights)
            old = self.value.clone()
            coupling.easgd_center_update_(self.value, weights, alpha)
            self.sent = old.numpy()  # each replica's half uses the same old w̃
        else:
            self.value = coupling.center(weights)
            self.sent = self.value.numpy() if self.kind in COUPLED else None
        return coupling.squared_distances(weights, self.value[:num_params]).sqrt()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's keys for the center (the names older checkpoints use)."""
        sent = None if self.sent is None else _owned(self.sent)
        return {"center": self.value, "sent_center": sent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["center"]
        sent = state["sent_center"]
        self.sent = None if sent is None else sent.numpy()


def _owned(array: np.ndarray) -> Tensor:
    """A tensor that owns a copy of `array` (which may be a read-only view)."""
    return torch.from_numpy(np.array(array, copy=True))
