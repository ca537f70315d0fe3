"""Every measure of one model on the stated subsets: a plain function, which the Ray task
and the rescaling check only call."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from foundation.data import Dataset
from foundation.evaluation import metrics
from jobs.flatness.settings import SPLITS, Settings
from landscape import (
    NOISES,
    Eigenvalues,
    LocalEnergy,
    SpectralDensity,
    TraceEstimate,
    hessian_spectral_density,
    hessian_top_eigenvalues,
    hessian_trace,
    local_energy,
)

ProgressFn = Callable[[str], None]
Subsets = dict[str, tuple[Tensor, Tensor]]
"""split → (x, y): the first N samples of it, on the model's device."""


@dataclass
class Measured:
    """Every measure of one model (the plain-function result; tests read it directly)."""

    test_accuracy: float
    test_loss: float
    energy: dict[tuple[str, str], LocalEnergy]
    """(noise, split) → δE curves."""
    eigen: Eigenvalues
    trace: TraceEstimate
    density: SpectralDensity
    seconds: dict[str, float]
    n_train: int
    n_test: int


@dataclass
class _Hessian:
    eigen: Eigenvalues
    trace: TraceEstimate
    density: SpectralDensity


def measure(
    model: nn.Module,
    data: Dataset,
    settings: Settings,
    progress: ProgressFn | None = None,
) -> Measured:
    """All measures of one model on the stated subsets (see Settings)."""
    device = next(model.parameters()).device
    n_train = min(settings.subset, len(data.train.y))
    n_test = min(settings.subset, len(data.test.y))
    xs: Subsets = {
        "train": (data.train.x[:n_train].to(device), data.train.y[:n_train].to(device)),
        "test": (data.test.x[:n_test].to(device), data.test.y[:n_test].to(device)),
    }
    seconds: dict[str, float] = {}
    say = progress or (lambda _: None)

    started = time.perf_counter()
    training = model.training
    test_loss, test_accuracy, _ = metrics(model, data.test)
    model.train(training)  # metrics leaves it in train mode; the model came in eval mode
    assert test_accuracy is not None  # the default metric is accuracy
    seconds["accuracy"] = time.perf_counter() - started

    energy = _local_energies(model, xs, settings, seconds, say)
    h = _hessian(model, *xs["train"], settings, seconds, say)
    return Measured(
        test_accuracy, test_loss, energy, h.eigen, h.trace, h.density, seconds, n_train, n_test
    )


def _local_energies(
    model: nn.Module, xs: Subsets, settings: Settings, seconds: dict[str, float], say: ProgressFn
) -> dict[tuple[str, str], LocalEnergy]:
    """δE(σ) for each noise on each split; the time of each noise into `seconds`."""
    energy: dict[tuple[str, str], LocalEnergy] = {}
    for noise in NOISES:
        started = time.perf_counter()
        for split in SPLITS:
            x, y = xs[split]
            energy[noise, split] = local_energy(
                model,
                x,
                y,
                settings.grid(noise),
                noise=noise,
                num_samples=settings.samples,
                seed=settings.seed,
            )
        seconds[f"local_energy_{noise}"] = time.perf_counter() - started
        say(f"local energy ({noise}) {seconds[f'local_energy_{noise}']:.1f} s")
    return energy


def _hessian(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: Settings,
    seconds: dict[str, float],
    say: ProgressFn,
) -> _Hessian:
    """Top eigenvalues, trace and spectral density on (x, y); their times into `seconds`."""
    with warnings.catch_warnings():
        # Non-convergence is reported (converged, residuals) rather than warned about.
        warnings.simplefilter("ignore", RuntimeWarning)
        started = time.perf_counter()
        dim = sum(p.numel() for p in model.parameters())
        eigen = hessian_top_eigenvalues(
            model,
            x,
            y,
            k=min(settings.top_k, dim),
            max_steps=settings.lanczos_steps,
            seed=settings.seed,
        )
    seconds["hessian_top_eigenvalue"] = time.perf_counter() - started
    say(f"top eigenvalues {seconds['hessian_top_eigenvalue']:.1f} s ({eigen.steps} HVPs)")
    started = time.perf_counter()
    trace = hessian_trace(model, x, y, num_samples=settings.trace_samples, seed=settings.seed)
    seconds["hessian_trace"] = time.perf_counter() - started
    say(f"trace {seconds['hessian_trace']:.1f} s ({settings.trace_samples} HVPs)")
    started = time.perf_counter()
    density = hessian_spectral_density(
        model,
        x,
        y,
        num_probes=settings.density_probes,
        num_steps=settings.density_steps,
        seed=settings.seed,
    )
    seconds["hessian_spectral_density"] = time.perf_counter() - started
    say(f"spectral density {seconds['hessian_spectral_density']:.1f} s")
    return _Hessian(eigen, trace, density)
