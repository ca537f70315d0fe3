"""`python -m jobs.flatness --run DIR [--baseline DIR]`: how flat is what a run found?

Measures the center, each replica and (with --baseline) the baseline run's center and
replicas from their newest verified checkpoints, with every measure of algorithms.md §6:

- local energy δE(σ), multiplicative (w + σ z ⊙ w) and additive (w + σ z), loss and
  error deltas on train and test, Monte-Carlo over M draws per σ;
- the Hessian of the mean training loss: top-k eigenvalues (Lanczos), trace
  (Hutchinson) and spectral density (stochastic Lanczos quadrature).

All of them on a STATED subset: the first `--subset` training samples (and the first
`--subset` test samples for the test split of δE); test accuracy on the whole test set.
A center's BatchNorm statistics are recomputed on training data first (averaged
statistics do not belong to the averaged weights); a replica keeps its own.

Writes flatness.parquet (a tidy long table), flatness.json (the summary),
plots/local_energy.png and plots/hessian.png into the run directory, and, with
--rescale-check ALPHA, rescale_check.json: every measure again after Dinh et al.'s
function-preserving α-rescaling, observed invariant or not against
landscape.INVARIANCE. By default each model is one Ray task (num_cpus=1); --local
measures in this process. Bad input: one line on stderr and exit status 2.

The measures themselves (prepare_model, measure, measure_model) are plain functions:
the Ray task only calls them.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coordinator import checkpoint
from coordinator.rundir import RunDir
from flatmath.flat import unflatten_state_
from foundation.config import Config, ConfigError, config_from_text
from foundation.data import Dataset, DatasetError, load_dataset
from foundation.models import build_model, count_parameters
from foundation.storage import Storage
from landscape import (
    INVARIANCE,
    INVARIANCE_NOTES,
    NOISES,
    Eigenvalues,
    LocalEnergy,
    Noise,
    SpectralDensity,
    TraceEstimate,
    find_pairs,
    hessian_spectral_density,
    hessian_top_eigenvalues,
    hessian_trace,
    local_energy,
    rescale_,
)

MEASURES: tuple[str, ...] = tuple(INVARIANCE)
SPLITS: tuple[str, ...] = ("train", "test")
LOWER_IS_FLATTER = "lower is flatter for every measure here"
DEFAULT_SIGMAS: tuple[float, ...] = tuple(round(0.05 * i, 10) for i in range(11))
"""Multiplicative σ: relative size of the shake, 0 … 0.5 (w' = w (1 + σ z))."""
DEFAULT_ADDITIVE_SIGMAS: tuple[float, ...] = tuple(round(0.005 * i, 10) for i in range(11))
"""Additive σ: absolute, in weight units, 0 … 0.05 (w' = w + σ z)."""

SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("group", pa.string()),
        ("role", pa.string()),
        ("measure", pa.string()),
        ("quantity", pa.string()),
        ("split", pa.string()),
        ("sigma", pa.float64()),
        ("index", pa.int64()),
        ("x", pa.float64()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("invariant", pa.bool_()),
    ]
)
"""flatness.parquet, one row per model × measure × quantity × split × σ (or index):

model      "center", "replica 0", …, "baseline center", "baseline replica 0", …
group      "run" or "baseline";  role: "center" or "replica"
measure    a key of landscape.INVARIANCE, or "accuracy" (not a flatness measure)
quantity   local energy: loss_delta, error_delta (per σ), base_loss, base_error;
           hessian_top_eigenvalue: eigenvalue (index = rank, 0 = largest);
           hessian_trace: trace; hessian_spectral_density: node_weight (x = the
           quadrature node, an eigenvalue location; value = its weight; index = node
           number) and broadening (value = the Gaussian's standard deviation);
           accuracy: accuracy and loss on the whole test set
split      "train" (the stated training subset) or "test"
sigma      σ of the local energy (relative for multiplicative, absolute for additive)
stderr     Monte-Carlo standard error; for an eigenvalue, the Lanczos residual bound
           (the true eigenvalue is within it); null where there is none
invariant  landscape.INVARIANCE[measure]; null for accuracy
"""


class FlatnessError(ValueError):
    """Bad input, said in one line."""


# ------------------------------------------------------------------ settings


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
        if self.subset < 2:
            raise FlatnessError(f"--subset must be >= 2 samples, got {self.subset}")
        if self.samples < 2:
            raise FlatnessError(
                f"--samples must be >= 2 (one draw has no error bar), got {self.samples}"
            )
        for flag, grid in (("--sigmas", self.sigmas), ("--additive-sigmas", self.additive_sigmas)):
            if not grid or any(not math.isfinite(s) or s < 0 for s in grid):
                raise FlatnessError(f"{flag} must be finite values >= 0, got {list(grid)}")
            if not any(s > 0 for s in grid):
                raise FlatnessError(f"{flag} needs at least one σ > 0, got {list(grid)}")
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
        if self.rescale_alpha is not None and not (
            math.isfinite(self.rescale_alpha) and self.rescale_alpha > 0
        ):
            raise FlatnessError(f"--rescale-check ALPHA must be > 0, got {self.rescale_alpha}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise FlatnessError(f"--device must be cpu or cuda, got {self.device!r}")
        return self

    def grid(self, noise: Noise) -> tuple[float, ...]:
        return tuple(
            sorted(set(self.sigmas if noise == "multiplicative" else self.additive_sigmas))
        )

    def report_sigmas(self, noise: Noise) -> tuple[float, float]:
        """The two σ the summary quotes: the middle and the largest non-zero σ."""
        positive = [s for s in self.grid(noise) if s > 0]
        return positive[(len(positive) - 1) // 2], positive[-1]


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure: a flat [parameters | float buffers] vector and its run."""

    name: str
    group: str
    """'run' or 'baseline'."""
    role: str
    """'center' or 'replica'."""
    run: str
    round: int
    config: Config
    vector: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class LoadedRun:
    run: RunDir
    config: Config
    round: int
    state: dict[str, Any]


def split_run(spec: str) -> tuple[str, str]:
    """--run runs/default → ("runs", "default"); s3://b/runs/x?opts → ("s3://b/runs?opts", "x")."""
    path, sep, query = spec.partition("?")
    path = path.rstrip("/")
    storage, slash, name = path.rpartition("/")
    if not slash:
        storage = "."
    if not name or storage.endswith(":/"):
        raise FlatnessError(f"--run {spec!r} does not name a run directory (<storage>/<name>)")
    return storage + sep + query, name


def open_run(spec: str) -> LoadedRun:
    """The run directory's config and newest verified checkpoint, or FlatnessError."""
    storage, name = split_run(spec)
    shown = spec.partition("?")[0]  # as the user wrote it, without the storage options
    try:
        where = Storage(storage).child(name)
        # Checked before RunDir, which would create the directory it is given.
        present = where.exists("")
        has_config = present and where.exists("config.toml")
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FlatnessError(f"cannot read the run directory {shown}: {reason}") from None
    if not present:
        raise FlatnessError(f"run directory not found: {shown}")
    if not has_config:
        raise FlatnessError(f"{shown} is not a run directory: it has no config.toml")
    run = RunDir(storage, name)
    try:
        config = config_from_text(run.read_bytes("config.toml").decode())
    except ConfigError as err:
        raise FlatnessError(f"{run.path}/config.toml: {err}") from None
    corrupt: list[str] = []
    found = checkpoint.load_latest(run, on_corrupt=lambda r, why: corrupt.append(f"{r}: {why}"))
    if found is None:
        skipped = f" ({len(corrupt)} corrupt skipped)" if corrupt else ""
        raise FlatnessError(f"no verified checkpoint in {shown}/checkpoints{skipped}")
    round_, state = found
    return LoadedRun(run, config, round_, state)


def model_specs(loaded: LoadedRun, group: str, max_replicas: int | None = None) -> list[ModelSpec]:
    """The center and the replicas (at most max_replicas of them) of one run."""
    prefix = "" if group == "run" else "baseline "
    path, config, round_ = loaded.run.path, loaded.config, loaded.round

    def spec(name: str, role: str, vector: Any) -> ModelSpec:
        flat = torch.as_tensor(vector).detach().to("cpu", torch.float32).numpy().copy()
        return ModelSpec(prefix + name, group, role, path, round_, config, flat)

    specs = [spec("center", "center", loaded.state["center"])]
    replicas = loaded.state["replicas"]
    count = len(replicas) if max_replicas is None else min(max_replicas, len(replicas))
    specs += [spec(f"replica {a}", "replica", replicas[a]["flat"]) for a in range(count)]
    return specs


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str) -> Dataset:
    return load_dataset(name, root)


def dataset_of(config: Config) -> Dataset:
    return _dataset(config.data.dataset, config.data.root)


def prepare_model(spec: ModelSpec, device: str = "cpu") -> tuple[nn.Module, str]:
    """The model of a spec, in eval mode; a center gets its BatchNorm statistics
    recomputed on training data exactly as replicas/replica.py does. Returns the model
    and a line saying where its BatchNorm statistics come from."""
    config = spec.config
    data = dataset_of(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten; only keeps the global RNG alone
        model = build_model(config.model.arch, data.input_shape, data.num_classes)
    model = model.to(device)
    unflatten_state_(model, torch.tensor(spec.vector, device=device))
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_bn:
        note = "no BatchNorm"
    elif spec.role == "center":
        batch = config.data.batch_size
        count = min(config.train.bn_batches * batch, len(data.train.x))
        batches = [data.train.x[i : i + batch].to(device) for i in range(0, count, batch)]
        torch.optim.swa_utils.update_bn(batches, model)
        note = f"recomputed on the first {count} training samples ({len(batches)} batches)"
    else:
        note = "the replica's own running statistics"
    return model.eval(), note


# ------------------------------------------------------------------ measuring


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


ProgressFn = Callable[[str], None]


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
    xs = {
        "train": (data.train.x[:n_train].to(device), data.train.y[:n_train].to(device)),
        "test": (data.test.x[:n_test].to(device), data.test.y[:n_test].to(device)),
    }
    seconds: dict[str, float] = {}
    say = progress or (lambda _: None)

    started = time.perf_counter()
    test_accuracy, test_loss = _accuracy(model, data.test.x, data.test.y, device)
    seconds["accuracy"] = time.perf_counter() - started

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

    x, y = xs["train"]
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
    return Measured(
        test_accuracy, test_loss, energy, eigen, trace, density, seconds, n_train, n_test
    )


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> tuple[float, float]:
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(y), 1000):
            xc, yc = x[start : start + 1000].to(device), y[start : start + 1000].to(device)
            out = model(xc)
            correct += int((out.argmax(1) == yc).sum())
            loss += float(F.cross_entropy(out, yc, reduction="sum"))
    return correct / len(y), loss / len(y)


def measure_model(
    spec: ModelSpec, settings: Settings, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Everything about one model as plain data: tidy rows, a summary, the rescale check."""
    started = time.perf_counter()
    model, bn_note = prepare_model(spec, settings.device)
    loaded = time.perf_counter() - started
    data = dataset_of(spec.config)
    measured = measure(model, data, settings, progress)
    measured.seconds["load_and_batchnorm"] = loaded
    result: dict[str, Any] = {
        "name": spec.name,
        "group": spec.group,
        "role": spec.role,
        "run": spec.run,
        "round": spec.round,
        "arch": spec.config.model.arch,
        "algorithm": spec.config.algorithm.kind,
        "parameters": count_parameters(model),
        "batchnorm": bn_note,
        "measured_by": {"host": socket.gethostname(), "pid": os.getpid()},
        "rows": rows_of(spec, measured),
        "summary": summary_of(measured, settings),
    }
    if settings.rescale_alpha is not None:
        rescale_started = time.perf_counter()
        result["rescale"] = rescale_check(model, data, measured, settings, progress)
        result["summary"]["wall_seconds"]["rescale_check"] = time.perf_counter() - rescale_started
    result["summary"]["wall_seconds"]["total"] = time.perf_counter() - started
    return result


def _measure_task(spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    """What one Ray task runs: one model on settings.threads threads (its num_cpus)."""
    torch.set_num_threads(settings.threads)
    return measure_model(spec, settings)


# ------------------------------------------------------------------ tidy rows, summary


def rows_of(spec: ModelSpec, m: Measured) -> list[dict[str, Any]]:
    base = {"model": spec.name, "group": spec.group, "role": spec.role}

    def row(measure_: str, quantity: str, value: float, **extra: Any) -> dict[str, Any]:
        out = {
            **base,
            "measure": measure_,
            "quantity": quantity,
            "split": None,
            "sigma": None,
            "index": None,
            "x": None,
            "value": float(value),
            "stderr": None,
            "invariant": INVARIANCE.get(measure_),
        }
        out.update(extra)
        return out

    rows = [
        row("accuracy", "accuracy", m.test_accuracy, split="test"),
        row("accuracy", "loss", m.test_loss, split="test"),
    ]
    for (noise, split), e in m.energy.items():
        name = f"local_energy_{noise}"
        rows.append(row(name, "base_loss", e.base_loss, split=split))
        rows.append(row(name, "base_error", e.base_error, split=split))
        for s, sigma in enumerate(e.sigmas.tolist()):
            for quantity, mean, se in (
                ("loss_delta", e.loss_delta, e.loss_delta_se),
                ("error_delta", e.error_delta, e.error_delta_se),
            ):
                rows.append(
                    row(
                        name,
                        quantity,
                        float(mean[s]),
                        split=split,
                        sigma=sigma,
                        stderr=float(se[s]),
                    )
                )
    for i, (value, residual) in enumerate(
        zip(m.eigen.values.tolist(), m.eigen.residuals.tolist(), strict=True)
    ):
        rows.append(
            row(
                "hessian_top_eigenvalue",
                "eigenvalue",
                value,
                split="train",
                index=i,
                stderr=residual,
            )
        )
    rows.append(row("hessian_trace", "trace", m.trace.mean, split="train", stderr=m.trace.stderr))
    d = m.density
    for j, (node, weight) in enumerate(zip(d.nodes.tolist(), d.weights.tolist(), strict=True)):
        rows.append(
            row("hessian_spectral_density", "node_weight", weight, split="train", index=j, x=node)
        )
    rows.append(row("hessian_spectral_density", "broadening", d.broadening, split="train"))
    return rows


def _at(e: LocalEnergy, sigma: float) -> dict[str, float]:
    s = int(torch.argmin((e.sigmas - sigma).abs()))
    return {
        "loss_delta": float(e.loss_delta[s]),
        "loss_delta_stderr": float(e.loss_delta_se[s]),
        "error_delta": float(e.error_delta[s]),
        "error_delta_stderr": float(e.error_delta_se[s]),
    }


def summary_of(m: Measured, settings: Settings) -> dict[str, Any]:
    energy: dict[str, Any] = {}
    for noise in NOISES:
        energy[noise] = {
            split: {f"{s:g}": _at(m.energy[noise, split], s) for s in settings.report_sigmas(noise)}
            for split in SPLITS
        }
    return {
        "test_accuracy": m.test_accuracy,
        "test_loss": m.test_loss,
        "train_subset_loss": m.energy["multiplicative", "train"].base_loss,
        "train_subset_error": m.energy["multiplicative", "train"].base_error,
        "top_eigenvalue": float(m.eigen.values[0]),
        "top_eigenvalues": m.eigen.values.tolist(),
        "top_eigenvalue_residuals": m.eigen.residuals.tolist(),
        "lanczos_steps": m.eigen.steps,
        "lanczos_converged": m.eigen.converged,
        "trace": {"mean": m.trace.mean, "stderr": m.trace.stderr, "samples": m.trace.num_samples},
        "spectral_density_largest_node": float(m.density.nodes.max()),
        "spectral_density_smallest_node": float(m.density.nodes.min()),
        "local_energy": energy,
        "subset": {"train": m.n_train, "test": m.n_test},
        "samples": settings.samples,
        "seed": settings.seed,
        "wall_seconds": dict(m.seconds),
    }


# ------------------------------------------------------------------ Dinh's rescaling check


def _changed(before: float, se_before: float, after: float, se_after: float) -> bool:
    """Moved by more than 3 combined standard errors (plus float32 rounding)."""
    tolerance = 3 * math.hypot(se_before, se_after) + 1e-4 * max(abs(before), abs(after)) + 1e-9
    return abs(after - before) > tolerance


def _scalar(m: Measured, name: str, settings: Settings) -> tuple[float, float]:
    """The one number per measure whose ratio after/before is reported."""
    if name.startswith("local_energy_"):
        noise: Noise = "multiplicative" if name.endswith("multiplicative") else "additive"
        at = _at(m.energy[noise, "train"], settings.report_sigmas(noise)[1])
        return at["loss_delta"], at["loss_delta_stderr"]
    if name == "hessian_top_eigenvalue":
        return float(m.eigen.values[0]), float(m.eigen.residuals[0])
    if name == "hessian_trace":
        return m.trace.mean, m.trace.stderr
    return float(m.density.nodes.max()), 0.0  # the spectrum's right edge


def _points(m: Measured, name: str) -> list[tuple[float, float]]:
    """Every estimate a measure consists of, to test "changed" on all of them."""
    if name.startswith("local_energy_"):
        noise = name.removeprefix("local_energy_")
        points: list[tuple[float, float]] = []
        for split in SPLITS:
            e = m.energy[noise, split]
            points += list(zip(e.loss_delta.tolist(), e.loss_delta_se.tolist(), strict=True))
            points += list(zip(e.error_delta.tolist(), e.error_delta_se.tolist(), strict=True))
        return points
    if name == "hessian_top_eigenvalue":
        return list(zip(m.eigen.values.tolist(), m.eigen.residuals.tolist(), strict=True))
    if name == "hessian_trace":
        return [(m.trace.mean, m.trace.stderr)]
    return [(float(m.density.nodes.max()), 0.0), (float(m.density.nodes.min()), 0.0)]


RESCALE_SUMMARY = {
    "local_energy_multiplicative": "train loss δE at the largest σ",
    "local_energy_additive": "train loss δE at the largest σ",
    "hessian_top_eigenvalue": "largest eigenvalue",
    "hessian_trace": "Hutchinson trace",
    "hessian_spectral_density": "largest SLQ node (the spectrum's right edge)",
}


def rescale_check(
    model: nn.Module,
    data: Dataset,
    before: Measured,
    settings: Settings,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Rescale a copy by α, check it predicts the same, measure it again with the same
    seeds, and say per measure whether it moved beyond its Monte-Carlo error."""
    alpha = settings.rescale_alpha
    assert alpha is not None
    rescaled = copy.deepcopy(model)
    try:
        pairs = find_pairs(rescaled)
    except ValueError as err:
        return {"alpha": alpha, "skipped": f"cannot rescale this model: {err}"}
    rescale_(rescaled, alpha, pairs)
    device = next(model.parameters()).device
    x = data.test.x[: settings.subset].to(device)
    with torch.no_grad():
        reference, outputs = model(x), rescaled(x)
    diff = float((outputs - reference).abs().max())
    scale = float(reference.abs().max())
    if progress:
        progress(f"rescaled by α={alpha:g}: max |Δ logit| = {diff:.2e}; measuring again")
    after = measure(rescaled, data, settings, progress)
    measures: dict[str, Any] = {}
    for name in MEASURES:
        b, sb = _scalar(before, name, settings)
        a, sa = _scalar(after, name, settings)
        changed = any(
            _changed(pb, sbb, pa_, saa)
            # strict=False: Lanczos may return fewer than k values on one side
            for (pb, sbb), (pa_, saa) in zip(
                _points(before, name), _points(after, name), strict=False
            )
        )
        measures[name] = {
            "what": RESCALE_SUMMARY[name],
            "before": b,
            "before_stderr": sb,
            "after": a,
            "after_stderr": sa,
            "ratio": a / b if b != 0 else None,
            "changed_beyond_error": changed,
            "observed": "NOT invariant" if changed else "invariant",
            "expected": "invariant" if INVARIANCE[name] else "NOT invariant",
        }
    return {
        "alpha": alpha,
        "pairs": [list(p) for p in pairs],
        "max_abs_prediction_diff": diff,
        "max_abs_logit": scale,
        "predictions_unchanged": diff <= 1e-4 * max(scale, 1.0),
        "measures": measures,
    }


# ------------------------------------------------------------------ verdicts


def _reference(results: list[dict[str, Any]], baseline_algorithm: str | None) -> list[list[str]]:
    """[label, model name, …] for each group of models the center is compared with."""
    names = {r["name"]: r for r in results}
    groups: list[list[str]] = []
    own = [n for n, r in names.items() if r["group"] == "run" and r["role"] == "replica"]
    if own:
        groups.append(["this run's replicas", *own])
    if baseline_algorithm is not None:
        reps = [n for n, r in names.items() if r["group"] == "baseline" and r["role"] == "replica"]
        if baseline_algorithm == "sgd" and reps:
            # An sgd run's "center" averages independently trained nets: not a trained model.
            groups.append(["the baseline's replicas (independent SGD runs)", *reps])
        elif "baseline center" in names:
            groups.append(["the baseline's center", "baseline center"])
    return groups


def _value(summary: dict[str, Any], name: str, settings: Settings, at: int) -> tuple[float, float]:
    if name == "hessian_top_eigenvalue":
        return summary["top_eigenvalue"], summary["top_eigenvalue_residuals"][0]
    if name == "hessian_trace":
        return summary["trace"]["mean"], summary["trace"]["stderr"]
    noise: Noise = "multiplicative" if name.endswith("multiplicative") else "additive"
    sigma = settings.report_sigmas(noise)[at]
    point = summary["local_energy"][noise]["train"][f"{sigma:g}"]
    return point["loss_delta"], point["loss_delta_stderr"]


def verdicts(
    results: list[dict[str, Any]], settings: Settings, baseline_algorithm: str | None
) -> list[dict[str, Any]]:
    """Center vs each reference group, per scalar measure; a claim needs a gap of more
    than 2 standard errors to EVERY member of the group, else "no clear difference"."""
    by_name = {r["name"]: r["summary"] for r in results}
    if "center" not in by_name:
        return []
    out: list[dict[str, Any]] = []
    checks = [("hessian_top_eigenvalue", 0, "λ_max"), ("hessian_trace", 0, "tr H")]
    for noise in NOISES:
        for at in (0, 1):
            sigma = settings.report_sigmas(noise)[at]
            label = f"δE{'×' if noise == 'multiplicative' else '+'}(σ={sigma:g})"
            checks.append((f"local_energy_{noise}", at, label))
    for label, *members in _reference(results, baseline_algorithm):
        for name, at, short in checks:
            c, sc = _value(by_name["center"], name, settings, at)
            others = {m: _value(by_name[m], name, settings, at) for m in members}
            lo = min(v - 2 * s for v, s in others.values())
            hi = max(v + 2 * s for v, s in others.values())
            if c + 2 * sc < lo:
                verdict = "center flatter"
            elif c - 2 * sc > hi:
                verdict = "center sharper"
            else:
                verdict = "no clear difference"
            values = ", ".join(f"{v:.4g} ± {s:.2g}" for v, s in others.values())
            caveat = (
                "invariant to the α-rescaling of ReLU layers"
                if INVARIANCE[name]
                else "NOT invariant: a function-preserving rescaling can move it at will"
            )
            out.append(
                {
                    "measure": name,
                    "label": short,
                    "against": label,
                    "verdict": verdict,
                    "center": [c, sc],
                    "others": {m: list(v) for m, v in others.items()},
                    "invariant": INVARIANCE[name],
                    "text": f"{short:<16} center {c:.4g} ± {sc:.2g} vs {values} → {verdict} "
                    f"({caveat})",
                }
            )
        acc = by_name["center"]["test_accuracy"]
        accs = ", ".join(f"{by_name[m]['test_accuracy']:.4f}" for m in members)
        out.append(
            {
                "measure": "accuracy",
                "label": "test acc",
                "against": label,
                "verdict": None,
                "center": [acc, None],
                "others": {m: [by_name[m]["test_accuracy"], None] for m in members},
                "invariant": None,
                "text": f"{'test accuracy':<16} center {acc:.4f} vs {accs}",
            }
        )
    return out


# ------------------------------------------------------------------ output


def table(results: list[dict[str, Any]], settings: Settings) -> str:
    lo, hi = settings.report_sigmas("multiplicative")
    header = (
        f"{'model':<22} {'test acc':>8} {'λ_max':>9} {'tr H ± se':>19} "
        f"{f'δE×(σ={lo:g}) ± se':>20} {f'δE×(σ={hi:g}) ± se':>20}"
    )
    lines = [header]
    for r in results:
        s = r["summary"]
        trace = f"{s['trace']['mean']:.4g} ± {s['trace']['stderr']:.2g}"
        cells = []
        for sigma in (lo, hi):
            p = s["local_energy"]["multiplicative"]["train"][f"{sigma:g}"]
            cells.append(f"{p['loss_delta']:.4g} ± {p['loss_delta_stderr']:.2g}")
        flag = "" if s["lanczos_converged"] else " (Lanczos not converged)"
        name = r["name"] + ("*" if _averaged_only(r) else "")
        lines.append(
            f"{name:<22} {s['test_accuracy']:>8.4f} {s['top_eigenvalue']:>9.4g} "
            f"{trace:>19} {cells[0]:>20} {cells[1]:>20}{flag}"
        )
    n = results[0]["summary"]["subset"]["train"] if results else settings.subset
    if any(_averaged_only(r) for r in results):
        lines.append(
            "* the center of an sgd run: the average of independently trained replicas, not a "
            "trained model (compare with its replicas)"
        )
    lines.append(
        f"λ_max, tr H: Hessian of the mean training cross-entropy on the first {n} training "
        f"samples; δE×: multiplicative local energy, train loss rise in nats, M = "
        f"{settings.samples}, seed {settings.seed}; test acc on the whole test set."
    )
    return "\n".join(lines)


def _ratio(r: float) -> str:
    return f"{r:.6f}" if abs(r - 1) < 1e-3 else f"{r:.4g}"


def _averaged_only(result: dict[str, Any]) -> bool:
    return bool(result["role"] == "center" and result["algorithm"] == "sgd")


def rescale_table(results: list[dict[str, Any]]) -> str:
    """One line per model (predictions), then one per measure: ratios, observed, expected."""
    checked = [r for r in results if "measures" in r.get("rescale", {})]
    lines = []
    for r in results:
        rc = r.get("rescale")
        if rc is None:
            continue
        if "skipped" in rc:
            lines.append(f"{r['name']}: {rc['skipped']}")
        else:
            state = "unchanged" if rc["predictions_unchanged"] else "CHANGED"
            lines.append(
                f"{r['name']}: α = {rc['alpha']:g} on layer pairs {rc['pairs']}: predictions "
                f"{state}, max |Δ logit| = {rc['max_abs_prediction_diff']:.2e} "
                f"(max |logit| {rc['max_abs_logit']:.3g})"
            )
    if not checked:
        return "\n".join([*lines, "no model could be rescaled: nothing to compare"])
    lines.append("")
    ratio_head = f"ratio after/before ({len(checked)} models)"
    lines.append(f"{'measure':<28} {ratio_head:<30} {'observed':<14} landscape.INVARIANCE")
    for name in MEASURES:
        entries = [r["rescale"]["measures"][name] for r in checked]
        ratios = [e["ratio"] for e in entries if e["ratio"] is not None]
        low, high = (_ratio(min(ratios)), _ratio(max(ratios))) if ratios else ("n/a", "n/a")
        span = low if low == high else f"{low} … {high}"
        observed = (
            "NOT invariant" if any(e["changed_beyond_error"] for e in entries) else "invariant"
        )
        expected = "invariant" if INVARIANCE[name] else "NOT invariant"
        mark = "matches" if observed == expected else "MISMATCH"
        lines.append(f"{name:<28} {span:<30} {observed:<14} {expected:<14} {mark}")
    lines.append(
        "observed NOT invariant = some estimate of the measure moved by more than 3 combined "
        "standard errors, with the same seeds before and after; ratios of: "
        + "; ".join(
            f"{n.removeprefix('local_energy_').removeprefix('hessian_')}: {w}"
            for n, w in RESCALE_SUMMARY.items()
        )
    )
    return "\n".join(lines)


def rescale_summary(results: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    checked = [r for r in results if "measures" in r.get("rescale", {})]
    per_measure = {}
    for name in MEASURES:
        entries = [r["rescale"]["measures"][name] for r in checked]
        observed = (
            "NOT invariant" if any(e["changed_beyond_error"] for e in entries) else "invariant"
        )
        expected = "invariant" if INVARIANCE[name] else "NOT invariant"
        per_measure[name] = {
            "observed": observed if entries else None,
            "expected": expected,
            "matches": observed == expected if entries else None,
            "note": INVARIANCE_NOTES[name],
            "what_the_ratio_is_of": RESCALE_SUMMARY[name],
            "ratio": {r["name"]: r["rescale"]["measures"][name]["ratio"] for r in checked},
        }
    return {
        "alpha": alpha,
        "test": "a measure changed if any of its estimates moved by more than 3 combined "
        "standard errors (plus 1e-4 relative rounding), the same seeds before and after",
        "measures": per_measure,
        "models": {r["name"]: r["rescale"] for r in results if "rescale" in r},
    }


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (not JSON): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), sink)
    return sink.getvalue()


def report(
    run: LoadedRun,
    baseline: LoadedRun | None,
    results: list[dict[str, Any]],
    settings: Settings,
    *,
    execution: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """flatness.json's content."""
    data = dataset_of(run.config)
    n_train = min(settings.subset, len(data.train.y))
    n_test = min(settings.subset, len(data.test.y))
    name = data.name
    base_algorithm = baseline.config.algorithm.kind if baseline else None
    return _finite(
        {
            "run": run.run.path,
            "round": run.round,
            "algorithm": run.config.algorithm.kind,
            "arch": run.config.model.arch,
            "dataset": name,
            "baseline": None
            if baseline is None
            else {
                "run": baseline.run.path,
                "round": baseline.round,
                "algorithm": base_algorithm,
                "arch": baseline.config.model.arch,
            },
            "settings": {
                **{k: v for k, v in asdict(settings).items() if k != "rescale_alpha"},
                "subset_train": n_train,
                "subset_test": n_test,
                "hessian_data": (
                    f"the first {n_train} of the {len(data.train.y)} {name} training samples"
                ),
                "local_energy_data": {
                    "train": f"the first {n_train} of the {len(data.train.y)} training samples",
                    "test": f"the first {n_test} of the {len(data.test.y)} test samples",
                },
                "accuracy_data": f"all {len(data.test.y)} test samples",
                "report_sigmas": {n: list(settings.report_sigmas(n)) for n in NOISES},
                "execution": execution,
                "rule": LOWER_IS_FLATTER,
            },
            "invariance": {
                m: {"invariant": INVARIANCE[m], "note": INVARIANCE_NOTES[m]} for m in MEASURES
            },
            "models": {
                r["name"]: {
                    "group": r["group"],
                    "role": r["role"],
                    "run": r["run"],
                    "round": r["round"],
                    "arch": r["arch"],
                    "parameters": r["parameters"],
                    "batchnorm": r["batchnorm"],
                    "measured_by": r["measured_by"],
                    **r["summary"],
                }
                for r in results
            },
            "verdicts": verdicts(results, settings, base_algorithm),
            "wall_seconds": wall_seconds,
        }
    )


def write_outputs(
    run: LoadedRun,
    baseline: LoadedRun | None,
    results: list[dict[str, Any]],
    settings: Settings,
    *,
    execution: str,
    wall_seconds: float,
) -> dict[str, Any]:
    from jobs.flatness_plots import hessian_png, local_energy_png  # matplotlib only here

    rows = [row for r in results for row in r["rows"]]
    summary = report(
        run, baseline, results, settings, execution=execution, wall_seconds=wall_seconds
    )
    out = run.run
    out.write_bytes("flatness.parquet", parquet_bytes(rows))
    out.write_json("flatness.json", summary)
    subset = summary["settings"]["hessian_data"]
    out.write_bytes("plots/local_energy.png", local_energy_png(rows, settings.samples))
    out.write_bytes("plots/hessian.png", hessian_png(rows, subset))
    if settings.rescale_alpha is not None:
        out.write_json(
            "rescale_check.json", _finite(rescale_summary(results, settings.rescale_alpha))
        )
    return summary


# ------------------------------------------------------------------ running


def run_measurements(
    specs: Sequence[ModelSpec], settings: Settings, *, local: bool
) -> list[dict[str, Any]]:
    """measure_model for every spec: in this process, or one Ray task per model."""
    total = len(specs)
    if local:
        results = []
        threads = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        try:
            for i, spec in enumerate(specs, 1):
                print(f"[{i}/{total}] {spec.name}: measuring (round {spec.round})", flush=True)
                result = measure_model(spec, settings, _printer(spec.name))
                print(f"[{i}/{total}] {_done_line(result)}", flush=True)
                results.append(result)
        finally:
            torch.set_num_threads(threads)
        return results

    import ray

    from cluster.session import connect

    where = connect()
    gpus = 1 if settings.device.startswith("cuda") else 0
    if gpus and ray.cluster_resources().get("GPU", 0) < 1:  # the tasks would wait forever
        raise FlatnessError(f"--device {settings.device}: the Ray cluster has no GPU")
    task: Any = ray.remote(num_cpus=settings.threads, num_gpus=gpus)(_measure_task)
    refs = [task.remote(spec, settings) for spec in specs]
    print(f"flatness: {total} Ray tasks (one per model) on {where}", flush=True)
    index = {ref: i for i, ref in enumerate(refs)}
    found: dict[int, dict[str, Any]] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            found[index[done[0]]] = result
            print(f"[{len(found)}/{total}] {_done_line(result)}", flush=True)
    finally:
        for ref in pending:  # one failure ends the report: do not leave tasks running
            ray.cancel(ref, force=True)
    return [found[i] for i in range(total)]


def _printer(name: str) -> ProgressFn:
    return lambda line: print(f"    {name}: {line}", flush=True)


def _done_line(result: dict[str, Any]) -> str:
    s = result["summary"]
    seconds = s["wall_seconds"]
    parts = " · ".join(
        f"{k.removeprefix('hessian_').removeprefix('local_energy_')} {seconds[k]:.1f} s"
        for k in (*MEASURES,)
        if k in seconds
    )
    if "rescale" in result:
        parts += " · then all again, α-rescaled"
    return (
        f"{result['name']}: done in {seconds['total']:.1f} s ({parts}); λ_max "
        f"{s['top_eigenvalue']:.4g}, tr H {s['trace']['mean']:.4g}, test acc "
        f"{s['test_accuracy']:.4f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m jobs.flatness", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory, e.g. runs/default or s3://b/runs/x")
    p.add_argument("--baseline", help="a baseline run directory (e.g. an algorithm.kind=sgd run)")
    p.add_argument(
        "--rescale-check",
        type=float,
        metavar="ALPHA",
        dest="alpha",
        help="also measure every model after Dinh et al.'s α-rescaling (e.g. 10)",
    )
    p.add_argument(
        "--samples", type=int, default=d.samples, help="M, noise draws per σ (%(default)s)"
    )
    p.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=list(d.sigmas),
        help="multiplicative σ grid (relative; default 0 … 0.5 in 11 steps)",
    )
    p.add_argument(
        "--additive-sigmas",
        type=float,
        nargs="+",
        default=list(d.additive_sigmas),
        help="additive σ grid (absolute, weight units; default 0 … 0.05 in 11 steps)",
    )
    p.add_argument(
        "--subset",
        type=int,
        default=d.subset,
        help="first N training (and test) samples to measure on (%(default)s)",
    )
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="top Hessian eigenvalues (%(default)s)"
    )
    p.add_argument(
        "--lanczos-steps",
        type=int,
        default=d.lanczos_steps,
        help="max HVPs for the top eigenvalues (%(default)s)",
    )
    p.add_argument(
        "--trace-samples", type=int, default=d.trace_samples, help="Hutchinson probes (%(default)s)"
    )
    p.add_argument(
        "--density-probes", type=int, default=d.density_probes, help="SLQ probes (%(default)s)"
    )
    p.add_argument(
        "--density-steps",
        type=int,
        default=d.density_steps,
        help="SLQ Lanczos steps per probe (%(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of every random draw, the same for every model (%(default)s)",
    )
    p.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="measure at most this many replicas per run (default: all)",
    )
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads per model, and CPUs per Ray task (%(default)s)",
    )
    p.add_argument("--local", action="store_true", help="measure in this process, without Ray")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        settings = Settings(
            subset=args.subset,
            samples=args.samples,
            sigmas=tuple(args.sigmas),
            additive_sigmas=tuple(args.additive_sigmas),
            top_k=args.top_k,
            lanczos_steps=args.lanczos_steps,
            trace_samples=args.trace_samples,
            density_probes=args.density_probes,
            density_steps=args.density_steps,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            rescale_alpha=args.alpha,
        ).check()
        if args.max_replicas is not None and args.max_replicas < 0:
            raise FlatnessError(f"--max-replicas must be >= 0, got {args.max_replicas}")
        run = open_run(args.run)
        baseline = open_run(args.baseline) if args.baseline else None
        if baseline is not None and baseline.config.data.dataset != run.config.data.dataset:
            raise FlatnessError(
                f"the baseline was trained on {baseline.config.data.dataset}, the run on "
                f"{run.config.data.dataset}: their flatness is not comparable"
            )
        if args.local and settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise FlatnessError(f"--device {settings.device} --local: no CUDA device here")
        dataset_of(run.config)  # a missing data path fails here, before any task starts
        if baseline is not None:
            dataset_of(baseline.config)
    except (FlatnessError, DatasetError, OSError) as err:
        print(f"wv: error: {err}", file=sys.stderr)
        return 2
    specs = model_specs(run, "run", args.max_replicas)
    if baseline is not None:
        specs += model_specs(baseline, "baseline", args.max_replicas)
    print(
        f"flatness: {len(specs)} models ({run.config.model.arch} on {run.config.data.dataset}), "
        f"first {settings.subset} training samples, M = {settings.samples}, seed {settings.seed}",
        flush=True,
    )
    try:
        results = run_measurements(specs, settings, local=args.local)
    except FlatnessError as err:
        print(f"wv: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a task's failure: one line, not Ray's wrapped traceback
        cause = getattr(err, "cause", None) or err
        lines = [line for line in str(cause).splitlines() if line.strip()] or [""]
        print(f"wv: error: measuring failed: {type(cause).__name__}: {lines[0]}", file=sys.stderr)
        return 1
    summary = write_outputs(
        run,
        baseline,
        results,
        settings,
        execution="local" if args.local else "ray",
        wall_seconds=time.perf_counter() - started,
    )
    print()
    print(table(results, settings))
    print()
    print(f"Which is flatter? ({LOWER_IS_FLATTER}; a claim needs a gap > 2 standard errors)")
    against = None
    for v in summary["verdicts"]:
        if v["against"] != against:
            against = v["against"]
            print(f"  center vs {against}:")
        print(f"    {v['text']}")
    if not summary["verdicts"]:
        print("  nothing to compare the center with (no replicas measured and no --baseline)")
    print(
        "  The ± of λ_max is its Lanczos residual bound, not a sampling error: λ_max is that of "
        "the Hessian of the stated subset, itself a sample of the training set.\n"
        "  Caveat (Dinh et al. 2017): for ReLU nets, α-rescaling makes λ_max, tr H, the spectrum "
        "and additive δE arbitrarily large without changing one prediction (other "
        "reparametrizations make them arbitrarily small too); only the multiplicative δE "
        "survives that rescaling. Flatter is not proof of better generalization."
    )
    if settings.rescale_alpha is not None:
        print()
        print(rescale_table(results))
    written = ["flatness.parquet", "flatness.json", "plots/local_energy.png", "plots/hessian.png"]
    if settings.rescale_alpha is not None:
        written.append("rescale_check.json")
    print(f"\nwrote {', '.join(written)} in {run.run.path} ({summary['wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    # Run the importable copy, not __main__: Ray pickles functions and classes of
    # __main__ by value, and a worker cannot find __main__'s module-level helpers.
    from jobs import flatness

    sys.exit(flatness.main())
