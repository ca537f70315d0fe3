"""The coupling math of the replica algorithms, on flat tensors only (no Ray, no modules).

Symbols follow docs/algorithms.md: y replicas w^a stacked as the rows of a
[y, n] tensor, the center w̄ (their mean) or an explicit center w̃ (EASGD), learning
rate η, coupling period K, scope γ and Parle's center strength ρ.

The `_`-suffixed functions update their first argument in place (they save a copy of
an n-vector per replica, which matters at 11M parameters); the others return new
tensors and leave their inputs alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flatmath.local_steps import momentum_step_

Replicas = Tensor | Sequence[Tensor]
"""y flat replicas: a [y, n] stack, or y separate [n] vectors (e.g. read-only views of
the buffers the object store returned: summing them one by one saves stacking copies)."""


def _rows(replicas: Replicas) -> Sequence[Tensor]:
    if isinstance(replicas, Tensor) and replicas.dim() != 2:
        raise ValueError(f"expected a [y, n] stack, got shape {tuple(replicas.shape)}")
    if len(replicas) == 0:
        raise ValueError("no replicas")
    return list(replicas)  # rows of a stack are views: no copy


def replica_sum(replicas: Replicas) -> Tensor:
    """Σ_a w^a, accumulated row by row into one new vector."""
    rows = _rows(replicas)
    total = rows[0].clone()
    for row in rows[1:]:
        total.add_(row)
    return total


def center(replicas: Replicas) -> Tensor:
    """w̄ = (1/y) Σ_a w^a."""
    return replica_sum(replicas).div_(len(_rows(replicas)))


def squared_distances(replicas: Replicas, center_: Tensor) -> Tensor:
    """‖w^a − w̄‖² for each replica a, as a [y] tensor (rows may be longer than w̄: their
    first len(w̄) entries are compared)."""
    n = center_.shape[0]
    return torch.stack([(row[:n] - center_).pow(2).sum() for row in _rows(replicas)])


def rsgd_pull(weights: Tensor, center_: Tensor, lr: float, period: int, gamma: float) -> Tensor:
    """Replicated SGD's round pull: w ← w − η K γ (w − w̄).

    This is the "K·γ every K steps" form of the gradient of γ Σ_a ½‖w^a − w̄‖²
    (w̄ held fixed), so with K = 1 it is one gradient step on the replicated loss.
    """
    return weights - (lr * period * gamma) * (weights - center_)


def elastic_pull_(weights: Tensor, center_: Tensor, strength: float) -> Tensor:
    """w ← w − s (w − c) = (1 − s) w + s c, in place and without an n-sized temporary.

    rSGD's pull is s = ηKγ toward w̄; a replica's half of synchronous EASGD is s = α
    toward the old explicit center w̃.
    """
    return weights.mul_(1.0 - strength).add_(center_, alpha=strength)


def rsgd_pull_(weights: Tensor, center_: Tensor, lr: float, period: int, gamma: float) -> Tensor:
    """In-place rsgd_pull."""
    return elastic_pull_(weights, center_, lr * period * gamma)


def easgd_exchange_(weights: Tensor, center_tilde: Tensor, alpha: float) -> Tensor:
    """One EASGD exchange of one replica with the explicit center (the asynchronous form).

    d = α (w − w̃);  w ← w − d;  w̃ ← w̃ + d.  Both arguments change in place;
    w + w̃ is conserved. Returns d.
    """
    diff = (weights - center_tilde).mul_(alpha)
    weights.sub_(diff)
    center_tilde.add_(diff)
    return diff


def easgd_sync_(replicas: Tensor, center_tilde: Tensor, alpha: float) -> Tensor:
    """Synchronous EASGD: every replica exchanges with the SAME old center.

    d_a = α (w^a − w̃);  w^a ← w^a − d_a;  w̃ ← w̃ + Σ_a d_a  (β = y α).
    Σ_a w^a + w̃ is conserved. Updates `replicas` ([y, n]) and `center_tilde` in
    place; returns the [y, n] stack of d_a.
    """
    diffs = (replicas - center_tilde).mul_(alpha)
    replicas.sub_(diffs)
    center_tilde.add_(diffs.sum(dim=0))
    return diffs


def easgd_center_update_(center_tilde: Tensor, replicas: Replicas, alpha: float) -> Tensor:
    """The center's half of synchronous EASGD: w̃ ← w̃ + α Σ_a (w^a − w̃).

    Used when each replica applies its own half (w^a ← w^a − α(w^a − w̃)) in its own
    process: both halves read the same old w̃, so together they equal easgd_sync_.
    """
    rows = _rows(replicas)
    return center_tilde.mul_(1.0 - alpha * len(rows)).add_(replica_sum(rows), alpha=alpha)


def parle_direction(weights: Tensor, mu: Tensor, center_: Tensor, rho: float) -> Tensor:
    """Parle's outer-step direction g = (w − μ) + ρ (w − w̄).

    μ is the replica's own Entropy-SGD average; the outer step is w ← w − η g
    (through local_steps.momentum_step_ when momentum is used).
    """
    return (weights - mu) + rho * (weights - center_)


def parle_outer_step(weights: Tensor, mu: Tensor, center_: Tensor, lr: float, rho: float) -> Tensor:
    """Parle's outer step without momentum: w − η [(w − μ) + ρ (w − w̄)]."""
    return weights - lr * parle_direction(weights, mu, center_, rho)


def diloco_outer_step_(
    center_: Tensor, replicas: Replicas, buf: Tensor | None, lr: float, momentum: float
) -> Tensor:
    """DiLoCo's (and local SGD's) outer step on the center θ, in place; returns θ.

    Δ = θ − (1/y) Σ_a θ_a (the pseudo-gradient: where the replicas went, reversed);
    b ← m b + Δ;  θ ← θ − η_out (Δ + m b)  (Nesterov, as torch.optim.SGD(nesterov=True)).
    With η_out = 1 and m = 0 it is plain periodic averaging, θ ← mean (local SGD).
    `buf` (b) is updated in place and may be None only when m = 0.
    """
    return diloco_step_to_mean_(center_, center(replicas), buf, lr, momentum)


def diloco_step_to_mean_(
    center_: Tensor, mean: Tensor, buf: Tensor | None, lr: float, momentum: float
) -> Tensor:
    """diloco_outer_step_ given the replicas' mean (e.g. formed by an all-reduce)."""
    delta = center_ - mean
    return momentum_step_(center_, delta, buf, lr, momentum=momentum, nesterov=True)
