"""What the report measures with: its knobs (Settings), their checks, and shared names."""

from __future__ import annotations

import math
from dataclasses import dataclass

from foundation.fields import ConfigError
from landscape import INVARIANCE, Noise

MEASURES: tuple[str, ...] = tuple(INVARIANCE)
SPLITS: tuple[str, ...] = ("train", "test")
LOWER_IS_FLATTER = "lower is flatter for every measure here"
SHORT: dict[str, str] = {"test_accuracy": "test acc", "test_metric": "test metric",
                         "test_loss": "test loss"}  # fmt: skip
"""The printed name of each test number a model can be judged by (summary `headline`)."""
DEFAULT_SIGMAS: tuple[float, ...] = tuple(round(0.05 * i, 10) for i in range(11))
"""Multiplicative σ: relative size of the shake, 0 … 0.5 (w' = w (1 + σ z))."""
DEFAULT_ADDITIVE_SIGMAS: tuple[float, ...] = tuple(round(0.005 * i, 10) for i in range(11))
"""Additive σ: absolute, in weight units, 0 … 0.05 (w' = w + σ z)."""


def shown(key: str, value: float) -> str:
    """A test number as printed: a fraction to 4 decimals, a loss (of any scale, e.g. a
    regression's squared error) to 4 significant digits."""
    return f"{value:.4g}" if key == "test_loss" else f"{value:.4f}"


def loss_words(loss: str) -> str:
    """train.loss as the report's text names it, with its unit where it has one."""
    return {"cross_entropy": "cross-entropy, in nats", "mse": "mean squared error"}.get(loss, loss)


class FlatnessError(ConfigError):
    """Bad input, said in one line. A ConfigError, so that jobs.cli.guarded reports it
    like every other bad input: one line on stderr, exit status 2."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    subset: int = 1000
    """N: the Hessian and the train split of δE use the first N training samples (the
    test split of δE the first N test samples)."""
    samples: int = 100
    """M: noise draws per σ for the local energy (100 in Pittorino et al.)."""
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    additive_sigmas: tuple[float, ...] = DEFAULT_ADDITIVE_SIGMAS
    top_k: int = 3
    """Number of top Hessian eigenvalues."""
    lanczos_steps: int = 60
    """At most this many HVPs for the top eigenvalues (fewer once converged)."""
    trace_samples: int = 100
    """Rademacher probes for Hutchinson's trace."""
    density_probes: int = 4
    density_steps: int = 64
    """SLQ: probes × Lanczos steps = HVPs for the spectral density."""
    seed: int = 0
    """The same seed for every model: the same noise draws z for every δE, so models
    with one parameter layout are compared on common random numbers."""
    device: str = "cpu"
    threads: int = 1
    """Torch threads per model (and CPUs per Ray task): the small models here run fastest
    on one thread, and far slower on two of a 2-core box that is busy with anything else."""
    rescale_alpha: float | None = None

    def check(self) -> Settings:
        """self, or FlatnessError naming the first flag out of range."""
        self._check_sizes()  # in the order the flags were always checked: the same first error
        self._check_grids()
        self._check_minimums()
        alpha = self.rescale_alpha
        if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
            raise FlatnessError(f"--rescale-check ALPHA must be > 0, got {alpha}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FlatnessError(f"--device must be cpu or cuda, got {self.device!r}")
        return self

    def _check_sizes(self) -> None:
        if self.subset < 2:
            raise FlatnessError(f"--subset must be >= 2 samples, got {self.subset}")
        if self.samples < 2:
            raise FlatnessError(
                f"--samples must be >= 2 (one draw has no error bar), got {self.samples}"
            )

    def _check_minimums(self) -> None:
        for flag, value, low in (
            ("--top-k", self.top_k, 1),
            ("--lanczos-steps", self.lanczos_steps, 1),
            ("--trace-samples", self.trace_samples, 2),
            ("--density-probes", self.density_probes, 1),
            ("--density-steps", self.density_steps, 1),
            ("--threads", self.threads, 1),
        ):
            if value < low:
                raise FlatnessError(f"{flag} must be >= {low}, got {value}")

    def _check_grids(self) -> None:
        for flag, grid in (("--sigmas", self.sigmas), ("--additive-sigmas", self.additive_sigmas)):
            if not grid or any(not math.isfinite(s) or s < 0 for s in grid):
                raise FlatnessError(f"{flag} must be finite values >= 0, got {list(grid)}")
            if not any(s > 0 for s in grid):
                raise FlatnessError(f"{flag} needs at least one σ > 0, got {list(grid)}")

    def grid(self, noise: Noise) -> tuple[float, ...]:
        return tuple(
            sorted(set(self.sigmas if noise == "multiplicative" else self.additive_sigmas))
        )

    def report_sigmas(self, noise: Noise) -> tuple[float, float]:
        """The two σ the summary quotes: the middle and the largest non-zero σ."""
        positive = [s for s in self.grid(noise) if s > 0]
        return positive[(len(positive) - 1) // 2], positive[-1]
