"""What is measured: a run directory's newest verified checkpoint, as one spec per model,
and each spec made into a model in eval mode.

A center's BatchNorm statistics are recomputed by foundation.evaluation on the run's own
training data (held_out: without the validation part when data.validation > 0), the code
and the data replicas/replica.py uses, so that "the center" here is the run's center.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator import checkpoint
from coordinator.rundir import RunDir
from foundation.config import Config, ConfigError, config_from_text
from foundation.data import Dataset, held_out, load_dataset
from foundation.evaluation import has_batchnorm, load_vector_
from foundation.models import build_model
from foundation.storage import Storage
from jobs.flatness.settings import FlatnessError


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
    _check_exists(storage, name, shown)
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


def _check_exists(storage: str, name: str, shown: str) -> None:
    """FlatnessError unless <storage>/<name> holds a config.toml. Looked at before RunDir,
    which would create the directory it is given."""
    try:
        where = Storage(storage).child(name)
        present = where.exists("")
        has_config = present and where.exists("config.toml")
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FlatnessError(f"cannot read the run directory {shown}: {reason}") from None
    if not present:
        raise FlatnessError(f"run directory not found: {shown}")
    if not has_config:
        raise FlatnessError(f"{shown} is not a run directory: it has no config.toml")


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


@functools.lru_cache(maxsize=2)
def _trained_on(name: str, root: str, validation: float) -> Dataset:
    # Cached because held_out copies the rows it keeps: once per data set, not per model.
    return held_out(_dataset(name, root), validation)


def dataset_of(config: Config) -> Dataset:
    """The whole data set: the measures' stated subsets and the whole test set."""
    return _dataset(config.data.dataset, config.data.root)


def trained_on(config: Config) -> Dataset:
    """The data the run trained on (its replicas' data): the training set without the
    validation part when data.validation > 0. A center's BatchNorm statistics come from it."""
    return _trained_on(config.data.dataset, config.data.root, config.data.validation)


def prepare_model(spec: ModelSpec, device: str = "cpu") -> tuple[nn.Module, str]:
    """The model of a spec, in eval mode; a center gets its BatchNorm statistics
    recomputed exactly as replicas/replica.py does. Returns the model and a line saying
    where its BatchNorm statistics come from."""
    config = spec.config
    data = trained_on(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten; only keeps the global RNG alone
        model = build_model(config.model.arch, data.input_shape, data.num_classes)
    model = model.to(device)
    batch = config.data.batch_size
    count = load_vector_(
        model, torch.tensor(spec.vector), data, center=spec.role == "center",
        batch_size=batch, bn_batches=config.train.bn_batches,
    )  # fmt: skip
    if not has_batchnorm(model):
        note = "no BatchNorm"
    elif spec.role == "center":
        batches = -(-count // batch)  # the last one may be short
        note = f"recomputed on the first {count} training samples ({batches} batches)"
    else:
        note = "the replica's own running statistics"
    return model.eval(), note
