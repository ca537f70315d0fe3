"""Lanczos with full reorthogonalization, and the random probes that start it.

landscape.hessian builds its measures on these: Lanczos (one Krylov basis of a symmetric
operator given only as v -> H v, and its tridiagonal T), the two-pass Gram-Schmidt that
keeps the basis orthogonal, float64 dot/norm helpers, and seeded Gaussian and Rademacher
probe vectors.

The Lanczos basis lives in the HVP's dtype (float32 for a float32 model: an 11M-weight
basis of 60 vectors is 2.6 GB, twice that in float64), while the tridiagonal scalars
(α, β: dot products and norms) are accumulated in float64, which costs no extra memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

HVP = Callable[[Tensor], Tensor]
"""v -> H v for flat vectors of the problem's dimension."""


class Lanczos:
    """Lanczos on a symmetric operator, with full reorthogonalization.

    Without reorthogonalization the basis loses orthogonality as soon as a Ritz value
    converges, and copies of converged eigenvalues ("ghosts") appear: wrong top-k and a
    density with spurious mass. Two classical Gram-Schmidt passes ("twice is enough")
    keep the basis orthogonal to working precision.
    """

    def __init__(self, hvp: HVP, start: Tensor) -> None:
        self.hvp = hvp
        self.basis: list[Tensor] = [start / norm64(start)]
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] = T[j, j+1]; one more once a step succeeds
        self.scale = 0.0  # running estimate of ‖H‖, for the breakdown test

    @property
    def size(self) -> int:
        return len(self.alphas)

    def step(self) -> bool:
        """One HVP; False on breakdown (the Krylov space is invariant, no next vector)."""
        q = self.basis[-1]
        w = self.hvp(q)
        alpha = dot64(q, w)
        self.alphas.append(alpha)
        w = w - alpha * q
        if self.betas:
            w.sub_(self.basis[-2], alpha=self.betas[-1])
        orthogonalize_(w, self.basis)
        beta = norm64(w)
        self.scale = max(self.scale, abs(alpha) + beta)
        # Below this, w is rounding noise: normalizing it would invent a direction.
        if beta <= 100 * torch.finfo(w.dtype).eps * self.scale or len(self.basis) == w.numel():
            return False
        self.betas.append(beta)
        self.basis.append(w / beta)
        return True

    def restart(self, vector: Tensor) -> None:
        """Continue from a fresh direction orthogonal to the basis (coupling β = 0)."""
        orthogonalize_(vector, self.basis)
        self.betas.append(0.0)
        self.basis.append(vector / norm64(vector))

    def tridiagonal(self) -> Tensor:
        m = self.size
        off = torch.tensor(self.betas[: m - 1], dtype=torch.float64)
        alphas = torch.tensor(self.alphas, dtype=torch.float64)
        return torch.diag(alphas) + torch.diag(off, 1) + torch.diag(off, -1)

    def top_ritz(self, k: int) -> tuple[Tensor, Tensor]:
        """The (up to) k largest Ritz values and their residuals |β_m s_{m,j}|."""
        theta, vecs = torch.linalg.eigh(self.tridiagonal())
        beta_next = self.betas[self.size - 1] if len(self.betas) >= self.size else 0.0
        order = torch.argsort(theta, descending=True)[:k]
        return theta[order], beta_next * vecs[-1, order].abs()


def orthogonalize_(w: Tensor, basis: list[Tensor]) -> None:
    """Remove from w, in place, its components along the (orthonormal) basis.

    Two classical Gram-Schmidt passes: one loses orthogonality to cancellation when w
    lies nearly in the span, the second restores it ("twice is enough").
    """
    for _ in range(2):
        for q in basis:
            w.sub_(q, alpha=dot64(q, w))


def dot64(a: Tensor, b: Tensor) -> float:
    """a·b summed in float64 whatever the vectors' dtype: a scalar of the tridiagonal."""
    return float((a * b).sum(dtype=torch.float64))


def norm64(a: Tensor) -> float:
    """‖a‖ accumulated in float64 whatever a's dtype."""
    return float(torch.linalg.vector_norm(a, dtype=torch.float64))


def seeded_generator(seed: int, device: torch.device | str | None) -> torch.Generator:
    """A generator on the probes' device, so they are drawn there rather than copied."""
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(seed)


def gaussian(
    dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str | None
) -> Tensor:
    """A standard normal vector: the Lanczos start for top eigenvalues."""
    return torch.randn(dim, generator=generator, dtype=dtype, device=device)


def rademacher(
    dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str | None
) -> Tensor:
    """A vector of independent ±1: the probe for Hutchinson and for SLQ."""
    bits = torch.randint(0, 2, (dim,), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)
