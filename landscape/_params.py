"""Helpers shared by the flatness measures: flat parameter vectors, eval mode, chunking.

The flat vector of a model is its parameters in `model.parameters()` order, the same
order (and so the same prefix) as the parameter part of flatmath.flat.flatten_state
(flatmath.flat.read_flat and write_flat_ read and write it).
BatchNorm running statistics are buffers and never part of it: the measures here are
about the loss as a function of the trainable weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(outputs, targets) -> the MEAN loss over the batch (like F.cross_entropy)."""


def parameters_of(model: nn.Module) -> list[Tensor]:
    params: list[Tensor] = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    return params


def split_like(vector: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Views of a flat vector shaped like each parameter."""
    pieces = torch.split(vector, [p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params, strict=True)]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode, then give every submodule back its own training flag.

    Eval mode because a train-mode forward would move BatchNorm's running statistics
    (the SAM defect in docs/algorithms.md) and use batch statistics, so the measured loss
    would not be the deployed model's loss.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def chunks(x: Tensor, y: Tensor, chunk_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) in consecutive slices of at most chunk_size rows."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y need the same, non-zero length; got {len(x)} and {len(y)}")
    for start in range(0, len(x), chunk_size):
        yield x[start : start + chunk_size], y[start : start + chunk_size]
