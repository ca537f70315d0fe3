"""Dinh et al. (2017)'s α-rescaling: same function, different flatness numbers.

For an affine layer i (Linear/Conv) followed, through positively homogeneous layers
only (ReLU: relu(αx) = α relu(x) for α > 0), by an affine layer j:

    W_i ← α W_i,   b_i ← α b_i,   W_j ← W_j / α

leaves the network's function unchanged, while the Hessian blocks of W_i and W_j
scale by 1/α² and α². Any flatness measure that moves under this transform can be made
as large or as small as one likes without changing a single prediction; INVARIANCE
records which of ours do, and the flatness report must show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

# Layers with weights that the rescaling acts on (the bias is optional).
AFFINE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Layers f with f(αx) = α f(x) for every α > 0 and no state that depends on the scale
# of x: α passes straight through them.
POSITIVELY_HOMOGENEOUS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)

NORMALIZATION: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)

INVARIANCE: dict[str, bool] = {
    "local_energy_multiplicative": True,
    "local_energy_additive": False,
    "hessian_top_eigenvalue": False,
    "hessian_trace": False,
    "hessian_spectral_density": False,
}
"""Whether each flatness measure is unchanged by the α-rescaling (docs/algorithms.md)."""

INVARIANCE_NOTES: dict[str, str] = {
    "local_energy_multiplicative": (
        "invariant for positively homogeneous layers: the noise σ z ⊙ w scales with w, "
        "so a rescaled perturbed net is the perturbed rescaled net (not invariant to "
        "reparametrizations in general)"
    ),
    "local_energy_additive": "not invariant: σ z is large next to a layer scaled by 1/α",
    "hessian_top_eigenvalue": "not invariant: can change by up to α²",
    "hessian_trace": "not invariant: the blocks of the rescaled layers scale by α² and 1/α²",
    "hessian_spectral_density": "not invariant: every eigenvalue can move, by up to α²",
}
"""One line per measure saying why, for the flatness report."""


def rescale_(
    model: nn.Module, alpha: float, pairs: Sequence[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """Apply the α-rescaling in place to each (i, j) pair of indices into model.

    pairs=None finds them with find_pairs (every consecutive pair of affine layers of an
    nn.Sequential); rescaling several pairs composes, and each step keeps the function.
    Returns the pairs that were rescaled.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (a negative α flips ReLU's sign), got {alpha}")
    chosen = find_pairs(model) if pairs is None else [_check_pair(model, p) for p in pairs]
    layers = _layers(model)
    with torch.no_grad():
        for i, j in chosen:
            first, second = _affine(layers[i]), _affine(layers[j])
            first.weight.mul_(alpha)
            if first.bias is not None:
                first.bias.mul_(alpha)
            second.weight.div_(alpha)  # layer j's bias sees the output unscaled: untouched
    return chosen


def _affine(layer: nn.Module) -> nn.Linear | nn.modules.conv._ConvNd:
    assert isinstance(layer, nn.Linear | nn.modules.conv._ConvNd)  # checked by _check_pair
    return layer


def find_pairs(model: nn.Module) -> list[tuple[int, int]]:
    """Every consecutive (i, j) pair of affine layers of an nn.Sequential.

    Raises ValueError if any layer between two affine layers is not positively
    homogeneous: the model is not one where this rescaling keeps the function, and
    silently skipping that pair would hide it. Name the pairs explicitly to go on.
    """
    layers = _layers(model)
    affine = [i for i, layer in enumerate(layers) if isinstance(layer, AFFINE)]
    if len(affine) < 2:
        raise ValueError(f"need two affine (Linear/Conv) layers to rescale, found {len(affine)}")
    return [_check_pair(model, (i, j)) for i, j in pairwise(affine)]


def _layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"rescaling works on an nn.Sequential (layer i -> ReLU -> layer j), "
            f"got {type(model).__name__}"
        )
    return list(model)


def _check_pair(model: nn.Module, pair: tuple[int, int]) -> tuple[int, int]:
    layers = _layers(model)
    i, j = pair
    if not 0 <= i < j < len(layers):
        raise ValueError(f"pair {pair} must satisfy 0 <= i < j < {len(layers)}")
    for index in (i, j):
        if not isinstance(layers[index], AFFINE):
            kind = type(layers[index]).__name__
            raise ValueError(f"layer {index} ({kind}) is not a Linear/Conv layer")
    for k in range(i + 1, j):
        _check_between(layers[k], k, pair)
    return i, j


def _check_between(layer: nn.Module, index: int, pair: tuple[int, int]) -> None:
    kind = type(layer).__name__
    if isinstance(layer, NORMALIZATION):
        raise ValueError(
            f"layer {index} ({kind}) between layers {pair[0]} and {pair[1]} normalizes its "
            f"input: in train mode it divides the factor α out (norm(αx) = norm(x)), in "
            f"eval mode it is affine with a shift (norm(αx) != α norm(x)); either way α "
            f"does not reach layer {pair[1]}, so its 1/α would change the function"
        )
    if not isinstance(layer, POSITIVELY_HOMOGENEOUS):
        raise ValueError(
            f"layer {index} ({kind}) between layers {pair[0]} and {pair[1]} is not "
            f"positively homogeneous (f(αx) = α f(x) for α > 0, like ReLU), so the "
            f"α-rescaling would change the function"
        )
