"""Local energy: how much the training loss rises when the weights are shaken.

    δE(w, σ) = E_z[ L(w + σ z ⊙ w) ] − L(w)     multiplicative noise (Pittorino et al.)
    δE(w, σ) = E_z[ L(w + σ z) ]     − L(w)     additive noise,     z ~ N(0, I)

Reported per σ as a Monte-Carlo mean over M draws of z with its standard error, for the
loss and for the error rate (1 − accuracy), on whatever split (x, y) is passed in: call
it once for train and once for test. Only parameters are perturbed, never BatchNorm
running statistics, and the model is evaluated in eval mode.

Invariance (docs/algorithms.md, Sharp minima): the multiplicative form is unchanged by
Dinh et al.'s α-rescaling of positively homogeneous layers, the additive form is not;
see landscape.rescale.INVARIANCE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flatmath.flat import read_flat, write_flat_
from landscape._params import LossFn, chunks, eval_mode, parameters_of

Noise = Literal["multiplicative", "additive"]
NOISES: tuple[Noise, ...] = ("multiplicative", "additive")


@dataclass(frozen=True)
class LocalEnergy:
    """δE per σ for one split; every tensor is float64 with one entry per σ."""

    sigmas: Tensor
    noise: Noise
    num_samples: int
    """M, the number of noise draws z averaged per σ."""
    base_loss: float
    """L(w), the unperturbed mean loss on the split."""
    base_error: float
    """1 − accuracy of the unperturbed model on the split."""
    loss_delta: Tensor
    """Mean over z of L(w') − L(w)."""
    loss_delta_se: Tensor
    """Standard error of loss_delta (sample std / √M)."""
    error_delta: Tensor
    """Mean over z of err(w') − err(w)."""
    error_delta_se: Tensor


def sigma_grid(sigma_max: float, num: int = 11) -> Tensor:
    """σ evenly spaced over [0, sigma_max], the sweep of docs/algorithms.md."""
    if not sigma_max > 0 or num < 2:
        raise ValueError(f"need sigma_max > 0 and num >= 2, got {sigma_max} and {num}")
    return torch.linspace(0.0, sigma_max, num, dtype=torch.float64)


def local_energy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    sigmas: Sequence[float] | Tensor,
    *,
    noise: Noise = "multiplicative",
    num_samples: int = 100,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 1024,
) -> LocalEnergy:
    """Monte-Carlo local energy of a classifier on (x, y) for every σ in sigmas.

    The same draws z_1..z_M are used for every σ (common random numbers): the curve
    δE(σ) is then much smoother than with fresh draws per σ, and two models with the
    same parameter layout evaluated with the same seed see the same z. The model's
    parameters are restored bit-exactly afterwards, also when an evaluation raises.
    """
    sig = _check_args(sigmas, noise, num_samples, y)
    params = parameters_of(model)
    w0 = read_flat(params)
    deltas = torch.empty(2, len(sig), num_samples, dtype=torch.float64)
    generator = torch.Generator(device=w0.device).manual_seed(seed)
    # Two work vectors for the whole run: no model copies, no allocation per draw.
    z, w = torch.empty_like(w0), torch.empty_like(w0)
    with eval_mode(model), torch.no_grad():
        base = _loss_and_error(model, x, y, loss_fn, chunk_size)
        try:
            for m in range(num_samples):
                torch.randn(z.shape, generator=generator, out=z)
                for s, sigma in enumerate(sig.tolist()):
                    _perturb(w0, z, sigma, noise, out=w)
                    write_flat_(params, w)
                    loss, err = _loss_and_error(model, x, y, loss_fn, chunk_size)
                    deltas[0, s, m], deltas[1, s, m] = loss - base[0], err - base[1]
        finally:
            write_flat_(params, w0)
    mean = deltas.mean(dim=-1)
    se = deltas.std(dim=-1, correction=1) / math.sqrt(num_samples)
    return LocalEnergy(sig, noise, num_samples, base[0], base[1], mean[0], se[0], mean[1], se[1])


def _check_args(
    sigmas: Sequence[float] | Tensor, noise: str, num_samples: int, y: Tensor
) -> Tensor:
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if len(sig) == 0 or not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise ValueError(f"sigmas must be a non-empty list of finite values >= 0, got {sigmas}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
    if num_samples < 2:  # one draw has no standard error
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    return sig


def has_labels(y: Tensor) -> bool:
    """Class labels (integers, one per row): only then is an error rate counted."""
    return not y.is_floating_point() and y.ndim == 1


def _perturb(w0: Tensor, z: Tensor, sigma: float, noise: Noise, *, out: Tensor) -> Tensor:
    """out = w0 + σ z ⊙ w0 (multiplicative) or w0 + σ z (additive), in place.

    At σ = 0 this is w0 + 0 = w0 exactly, so δE(0) is exactly 0, not merely small.
    """
    if noise == "multiplicative":
        torch.mul(z, w0, out=out)
    else:
        out.copy_(z)
    return out.mul_(sigma).add_(w0)


def _loss_and_error(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, chunk_size: int
) -> tuple[float, float]:
    """Mean loss and error rate over the whole split, accumulated in float64 by chunk; the
    error rate is NaN when the targets are not class labels (a regression)."""
    loss_sum, wrong, labels = 0.0, 0, has_labels(y)
    for xc, yc in chunks(x, y, chunk_size):
        out = model(xc)
        # loss_fn gives a chunk MEAN; weight it by the chunk size so a short last chunk
        # counts for what it holds.
        loss_sum += float(loss_fn(out, yc).double()) * len(yc)
        if labels:
            wrong += int((out.argmax(dim=1) != yc).sum())
    return loss_sum / len(y), wrong / len(y) if labels else math.nan
