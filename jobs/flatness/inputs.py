"""What is measured: a run directory's newest verified checkpoint, as one spec per model,
and each spec made into a model in eval mode.

The model, the data, the loss and the metric are the run's own, resolved from its
config by foundation.parts where the measuring runs (a user's import path is
imported there; one that cannot be is one line naming its key, exit status 2).
A center's BatchNorm statistics are recomputed by foundation.evaluation on the run's own
training data (held_out: without the validation part when data.validation > 0), the code
and the data replicas/replica.py uses, so that "the center" here is the run's center.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator import checkpoint
from coordinator.rundir import RunDir
from foundation.config import Config, ConfigError, config_from_text
from foundation.data import Dataset, held_out
from foundation.evaluation import has_batchnorm, load_vector_
from foundation.parts import Parts
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
    parts: Parts
    """The run's model, data, loss and metric, resolved here (the tasks resolve their own)."""


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
    return LoadedRun(run, config, round_, state, _parts(run.path, config))


def _parts(path: str, config: Config) -> Parts:
    """The run's parts, or FlatnessError naming the run and the key that failed
    (a model or loss whose module cannot be imported here, say)."""
    try:
        return parts_of(config)
    except ConfigError as err:
        raise FlatnessError(f"{path}/config.toml: {err}") from None


def parts_of(config: Config) -> Parts:
    """The model, data, loss and metric a config names (ConfigError naming the key)."""
    return Parts.from_config(config)


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


_CACHE: dict[tuple[Any, ...], Dataset] = {}
CACHED = 4  # data sets kept: the whole set and the trained-on part, of a run and a baseline


def _cached(key: tuple[Any, ...], load: Callable[[], Dataset]) -> Dataset:
    # Once per data set, not per model: a user's loader may be slow, and held_out copies
    # the rows it keeps. Keyed by what names the data (kwargs as sorted JSON, hashable).
    if key not in _CACHE:
        while len(_CACHE) >= CACHED:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load()
    return _CACHE[key]


def _data_key(config: Config) -> tuple[str, str, str]:
    data = config.data
    return data.dataset, json.dumps(data.kwargs, sort_keys=True, default=str), data.root


def dataset_of(config: Config) -> Dataset:
    """The whole data set: the measures' stated subsets and the whole test set."""
    root = config.data.root
    return _cached(("whole", *_data_key(config)), lambda: parts_of(config).data.load(root))


def trained_on(config: Config) -> Dataset:
    """The data the run trained on (its replicas' data, Parts.load_data): the
    training set without the validation part when data.validation > 0. A center's
    BatchNorm statistics come from it."""
    fraction = config.data.validation
    key = ("trained", *_data_key(config), fraction)
    return _cached(key, lambda: held_out(dataset_of(config), fraction))


def prepare_model(
    spec: ModelSpec, device: str = "cpu", parts: Parts | None = None
) -> tuple[nn.Module, str]:
    """The model of a spec, in eval mode; a center gets its BatchNorm statistics
    recomputed exactly as replicas/replica.py does. Returns the model and a line saying
    where its BatchNorm statistics come from."""
    config = spec.config
    parts = parts if parts is not None else parts_of(config)
    data = trained_on(config)
    # Seed 0 in a forked RNG: every weight is overwritten, the caller's RNG is left alone.
    model = parts.new_model(data, seed=0).to(device)
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
