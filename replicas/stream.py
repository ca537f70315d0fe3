"""A replica's own minibatch stream: its own shuffling seed and a resumable position."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class BatchStream:
    """Endless minibatches of (x, y), reshuffled every epoch, the last partial batch dropped.

    The order of epoch e is a pure function of (seed, e), so the whole position is the
    pair (epoch, offset): a checkpoint stores two integers, not a generator's state.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        if not 1 <= batch_size <= len(x):
            raise ValueError(f"batch size {batch_size} must be in [1, {len(x)}] for this data set")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.x), generator=generator).to(self.x.device)

    def next(self) -> tuple[Tensor, Tensor]:
        index = self.next_index()
        return self.x[index], self.y[index]

    def next_index(self) -> Tensor:
        """The rows of the next minibatch (advances the stream as next() does)."""
        if self.offset + self.batch_size > len(self.x):
            self.epoch += 1
            self.offset = 0
            self._order = self._permutation(self.epoch)
        index = self._order[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return index

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch, self.offset = (
            int(state["seed"]),
            int(state["epoch"]),
            int(state["offset"]),
        )
        self._order = self._permutation(self.epoch)
