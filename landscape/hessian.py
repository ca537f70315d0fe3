"""The Hessian of the loss through Hessian-vector products: top eigenvalues, trace, density.

Everything is built on one primitive, hvp(v) = H v (Pearlmutter's trick: differentiate
g(w)·v, with g taken under create_graph=True, a second time). Two layers:

- generic: top_eigenvalues, hutchinson_trace, spectral_density take any
  `hvp: Callable[[Tensor], Tensor]` and the dimension, so they are tested on matrices
  whose spectrum is known;
- models: hessian_top_eigenvalues, hessian_trace, hessian_spectral_density build the
  hvp of the mean loss of a model on (x, y) with make_hvp and call the generic ones.
  Vectors are flat, in model.parameters() order (see landscape._params).

Algorithms:
- Top-k eigenvalues: Lanczos with full reorthogonalization (not power iteration with
  deflation: deflation compounds the error of every earlier eigenpair, and Lanczos gets
  k extreme eigenvalues from one Krylov space in far fewer HVPs). It stops when the
  Ritz residuals of the top k drop below tol·|θ_max|.
- Trace: Hutchinson, E[vᵀHv] = tr H for Rademacher v; mean and standard error.
- Density: stochastic Lanczos quadrature (Ghorbani et al. 2019), Gaussian-broadened.

The Lanczos machinery itself (the basis, reorthogonalization, float64 scalars, random
probes) is in landscape.lanczos; HVP, the operator type, is defined there and re-exported.

Invariance (docs/algorithms.md, Sharp minima): none of these is invariant to Dinh et
al.'s α-rescaling; an eigenvalue can change by up to α². See landscape.rescale.INVARIANCE.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape._params import LossFn, chunks, eval_mode, parameters_of, split_like
from landscape.lanczos import HVP, Lanczos, dot64, gaussian, rademacher, seeded_generator


@dataclass(frozen=True)
class Eigenvalues:
    """The k algebraically largest eigenvalues, largest first (float64)."""

    values: Tensor
    residuals: Tensor
    """‖H u − θ u‖ of each Ritz pair: every value is within this of a true eigenvalue."""
    steps: int
    """Lanczos steps taken, i.e. HVPs computed."""
    converged: bool


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    stderr: float
    """Sample standard deviation of vᵀHv over the draws, divided by √M."""
    num_samples: int


@dataclass(frozen=True)
class SpectralDensity:
    """Eigenvalue density φ(t) = (1/n) Σ_i N(t; λ_i, s²), integrating to 1."""

    grid: Tensor
    density: Tensor
    nodes: Tensor
    """Ritz values of every probe (the quadrature nodes), for plots on any grid."""
    weights: Tensor
    """Their quadrature weights, averaged over probes so they sum to 1."""
    broadening: float
    """s, the standard deviation of the Gaussian put on each node."""


# ------------------------------------------------------------------ HVPs of a model


def make_hvp(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 256,
) -> HVP:
    """v -> H v for the mean loss of model on (x, y), in eval mode.

    The data goes through in chunks, so the double-backward graph only ever holds one
    chunk's activations: H v = Σ_c (n_c / n) H_c v, with H_c the Hessian of the chunk's
    mean loss. This is what lets an 11M-weight model take 1000 samples.
    """
    params = parameters_of(model)
    n = len(y)

    def hvp(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        outs, vs = split_like(out, params), split_like(v, params)
        with eval_mode(model):
            for xc, yc in chunks(x, y, chunk_size):
                terms = _hvp_terms(loss_fn(model(xc), yc), params, vs)
                for o, h in zip(outs, terms, strict=True):
                    o.add_(h, alpha=len(yc) / n)
        return out

    return hvp


def closure_hvp(loss: Callable[[], Tensor], params: Sequence[Tensor]) -> HVP:
    """v -> H v for any scalar loss closure of params (which must require grad)."""
    plist = list(params)

    def hvp(v: Tensor) -> Tensor:
        terms = _hvp_terms(loss(), plist, split_like(v, plist))
        return torch.cat([t.reshape(-1) for t in terms])

    return hvp


def _hvp_terms(loss: Tensor, params: list[Tensor], vs: list[Tensor]) -> list[Tensor]:
    """Pearlmutter: H v = ∂/∂w (∂L/∂w · v), by differentiating twice."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
        dot = torch.stack([(g * v).sum() for g, v in zip(grads, vs, strict=True)]).sum()
        if not dot.requires_grad:  # the loss is affine in the weights: H = 0
            return [torch.zeros_like(p) for p in params]
        return list(torch.autograd.grad(dot, params, materialize_grads=True))


def hessian_top_eigenvalues(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    k: int = 1,
    *,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 256,
    max_steps: int = 60,
    tol: float = 1e-5,
    seed: int = 0,
) -> Eigenvalues:
    """Top-k Hessian eigenvalues of the mean loss of model on (x, y); see top_eigenvalues."""
    dim, dtype, device = _problem(model)
    hvp = make_hvp(model, x, y, loss_fn=loss_fn, chunk_size=chunk_size)
    return top_eigenvalues(
        hvp, dim, k, max_steps=max_steps, tol=tol, seed=seed, dtype=dtype, device=device
    )


def hessian_trace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_samples: int = 100,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 256,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson estimate of the Hessian trace of the mean loss of model on (x, y)."""
    dim, dtype, device = _problem(model)
    hvp = make_hvp(model, x, y, loss_fn=loss_fn, chunk_size=chunk_size)
    return hutchinson_trace(hvp, dim, num_samples, seed=seed, dtype=dtype, device=device)


def hessian_spectral_density(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_probes: int = 4,
    num_steps: int = 64,
    num_points: int = 1000,
    broadening: float | None = None,
    loss_fn: LossFn = F.cross_entropy,
    chunk_size: int = 256,
    seed: int = 0,
) -> SpectralDensity:
    """SLQ density of the Hessian of the mean loss of model on (x, y)."""
    dim, dtype, device = _problem(model)
    hvp = make_hvp(model, x, y, loss_fn=loss_fn, chunk_size=chunk_size)
    return spectral_density(
        hvp,
        dim,
        num_probes=num_probes,
        num_steps=num_steps,
        num_points=num_points,
        broadening=broadening,
        seed=seed,
        dtype=dtype,
        device=device,
    )


def _problem(model: nn.Module) -> tuple[int, torch.dtype, torch.device]:
    params = parameters_of(model)
    return sum(p.numel() for p in params), params[0].dtype, params[0].device


# ------------------------------------------------------------------ generic: any hvp


def top_eigenvalues(
    hvp: HVP,
    dim: int,
    k: int = 1,
    *,
    max_steps: int = 60,
    tol: float = 1e-5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Eigenvalues:
    """The k algebraically largest eigenvalues of the symmetric operator hvp, by Lanczos.

    Stops once every one of the top k Ritz residuals is <= tol·|θ_max| (then each value
    is within that of a true eigenvalue), or after max_steps HVPs with a warning.
    Single-vector Lanczos sees an eigenvalue of multiplicity m > 1 only once, unless
    the Krylov space is exhausted and it restarts with a fresh vector.
    """
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, dim={dim}], got {k}")
    generator = seeded_generator(seed, device)
    lanczos = Lanczos(hvp, gaussian(dim, generator, dtype, device))
    values, residuals = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    converged = False
    for _ in range(min(max_steps, dim)):
        broke_down = not lanczos.step()
        values, residuals = lanczos.top_ritz(k)
        if lanczos.size == dim:  # T is now similar to H itself: its eigenvalues are exact
            converged = len(values) == k
            break
        if broke_down:  # an invariant subspace: look for the rest in a fresh direction
            lanczos.restart(gaussian(dim, generator, dtype, device))
            continue
        scale = float(values.abs().max())
        if len(values) == k and bool((residuals <= tol * max(scale, 1e-300)).all()):
            converged = True
            break
    if not converged:
        warnings.warn(
            f"Lanczos did not converge in {lanczos.size} steps: top-{k} residuals "
            f"{residuals.tolist()} for eigenvalues {values.tolist()}",
            RuntimeWarning,
            stacklevel=2,
        )
    return Eigenvalues(values, residuals, lanczos.size, converged)


def hutchinson_trace(
    hvp: HVP,
    dim: int,
    num_samples: int = 100,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """tr H ≈ (1/M) Σ vᵀHv over M Rademacher vectors v, with its standard error.

    Rademacher rather than Gaussian v: its variance 2 Σ_{i≠j} H_ij² is the smallest of
    any i.i.d. probe, and it is exact (zero variance) when H is diagonal.
    """
    if num_samples < 2:  # one draw has no standard error
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    generator = seeded_generator(seed, device)
    samples = torch.empty(num_samples, dtype=torch.float64)
    for m in range(num_samples):
        v = rademacher(dim, generator, dtype, device)
        samples[m] = dot64(v, hvp(v))
    stderr = float(samples.std(correction=1)) / math.sqrt(num_samples)
    return TraceEstimate(float(samples.mean()), stderr, num_samples)


def spectral_density(
    hvp: HVP,
    dim: int,
    *,
    num_probes: int = 4,
    num_steps: int = 64,
    num_points: int = 1000,
    broadening: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: the eigenvalue density of hvp, Gaussian-broadened.

    Each probe v (Rademacher, normalized) gives m Lanczos steps, whose Ritz values θ_j
    with weights τ_j = (first component of the j-th eigenvector of T)² form the Gauss
    quadrature of vᵀ f(H) v; averaging over probes estimates (1/n) tr f(H). The default
    broadening is 1% of the spread of the nodes; the grid pads 5 broadenings each side.
    """
    if num_probes < 1 or num_steps < 1 or num_points < 2:
        raise ValueError("num_probes, num_steps must be >= 1 and num_points >= 2")
    generator = seeded_generator(seed, device)
    nodes, weights = [], []
    for _ in range(num_probes):
        lanczos = Lanczos(hvp, rademacher(dim, generator, dtype, device))
        # An exact breakdown means the quadrature is already exact: stop there.
        while lanczos.size < min(num_steps, dim) and lanczos.step():
            pass
        theta, vecs = torch.linalg.eigh(lanczos.tridiagonal())
        nodes.append(theta)
        weights.append(vecs[0] ** 2 / num_probes)
    return _broaden(torch.cat(nodes), torch.cat(weights), num_points, broadening)


def _broaden(
    nodes: Tensor, weights: Tensor, num_points: int, broadening: float | None
) -> SpectralDensity:
    spread = float(nodes.max() - nodes.min())
    s = broadening if broadening is not None else 0.01 * (spread if spread > 0 else 1.0)
    if not s > 0:
        raise ValueError(f"broadening must be > 0, got {broadening}")
    grid = torch.linspace(
        float(nodes.min()) - 5 * s, float(nodes.max()) + 5 * s, num_points, dtype=torch.float64
    )
    kernel = torch.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / s) ** 2)
    density = kernel @ weights / (s * math.sqrt(2 * math.pi))
    return SpectralDensity(grid, density, nodes, weights, s)
