"""Every measure of one model on the stated subsets: a plain function, which the Ray task
and the rescaling check only call. Everything is measured with the run's own loss (and
its test numbers with its metric, when it has one): the landscape of the loss it trained."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from foundation.data import Dataset
from foundation.evaluation import metrics
from foundation.parts import LossFn, Parts
from jobs.flatness.settings import SPLITS, Settings
from landscape import (
    NOISES,
    Eigenvalues,
    LocalEnergy,
    SpectralDensity,
    TraceEstimate,
    has_labels,
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

    test_loss: float
    test_metric: float | None
    metric_name: str | None
    """"accuracy", "metric" (a user's) or None (the run has no metric: the loss is its
    headline), as Parts.metric_name."""
    labels: bool
    """The targets are class labels: only then are the error rates of δE measured."""
    energy: dict[tuple[str, str], LocalEnergy]
    """(noise, split) → δE curves (their error fields mean nothing without labels)."""
    eigen: Eigenvalues
    trace: TraceEstimate
    density: SpectralDensity
    seconds: dict[str, float]
    n_train: int
    n_test: int

    @property
    def kind(self) -> str:
        """What the test numbers are judged by: "accuracy", "metric" or "loss"."""
        return self.metric_name or "loss"


@dataclass
class _Hessian:
    eigen: Eigenvalues
    trace: TraceEstimate
    density: SpectralDensity


def measure(
    model: nn.Module,
    data: Dataset,
    parts: Parts,
    settings: Settings,
    progress: ProgressFn | None = None,
) -> Measured:
    """All measures of one model on the stated subsets (see Settings), with the run's
    loss and metric (`parts`)."""
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
    test_loss, test_metric, _ = metrics(model, data.test, None, parts.loss, parts.metric)
    model.train(training)  # metrics leaves it in train mode; the model came in eval mode
    seconds["test"] = time.perf_counter() - started

    energy = _local_energies(model, xs, parts.loss, settings, seconds, say)
    h = _hessian(model, *xs["train"], parts.loss, settings, seconds, say)
    return Measured(
        test_loss, test_metric, parts.metric_name, has_labels(data.train.y), energy,
        h.eigen, h.trace, h.density, seconds, n_train, n_test,
    )  # fmt: skip


def _local_energies(
    model: nn.Module, xs: Subsets, loss: LossFn, settings: Settings, seconds: dict[str, float],
    say: ProgressFn,
) -> dict[tuple[str, str], LocalEnergy]:  # fmt: skip
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
                loss_fn=loss,
            )
        seconds[f"local_energy_{noise}"] = time.perf_counter() - started
        say(f"local energy ({noise}) {seconds[f'local_energy_{noise}']:.1f} s")
    return energy


def _hessian(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: LossFn,
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
            loss_fn=loss,
            max_steps=settings.lanczos_steps,
            seed=settings.seed,
        )
    seconds["hessian_top_eigenvalue"] = time.perf_counter() - started
    say(f"top eigenvalues {seconds['hessian_top_eigenvalue']:.1f} s ({eigen.steps} HVPs)")
    started = time.perf_counter()
    trace = hessian_trace(
        model, x, y, num_samples=settings.trace_samples, loss_fn=loss, seed=settings.seed
    )
    seconds["hessian_trace"] = time.perf_counter() - started
    say(f"trace {seconds['hessian_trace']:.1f} s ({settings.trace_samples} HVPs)")
    started = time.perf_counter()
    density = hessian_spectral_density(
        model,
        x,
        y,
        num_probes=settings.density_probes,
        num_steps=settings.density_steps,
        loss_fn=loss,
        seed=settings.seed,
    )
    seconds["hessian_spectral_density"] = time.perf_counter() - started
    say(f"spectral density {seconds['hessian_spectral_density']:.1f} s")
    return _Hessian(eigen, trace, density)
