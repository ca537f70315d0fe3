"""What a run trains and how it is judged: its parts, the model, the data, the loss and
the metric, built-in or the user's.

model.arch, data.dataset, train.loss and train.metric each name a built-in (`mlp`,
`mnist1d`, `cross_entropy`, `accuracy`; their names are in foundation/part_names.py,
which needs no torch) or user code as `package.module:attribute`, the form of Python
entry points. An import path is imported where the part is needed — in the driver's
checks and on every replica's node — from the job's working directory
(`ray job submit --working-dir`) or an installed package. A config that names code runs
that code, as any Python entry point does.

Factories are called with their keyword arguments from the config (model.kwargs,
data.kwargs), plus the context they ask for by name: a model factory that takes
`input_shape` or `num_classes` gets them from the data, a data loader that takes `root`
gets data.root. Built-ins are called the same way.

Parts.from_config resolves the config's names where it is called, so every replica
resolves them on its own node; the Python API builds Parts from objects instead
(widevalley.fit, widevalley/arguments.py). check() builds the model once and puts one
batch through it and the loss, so a bad part fails with one line naming its key before
any replica starts.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.config import Config
from foundation.data import Dataset, DatasetError, held_out, load_dataset
from foundation.data.user import as_dataset
from foundation.fields import ConfigError
from foundation.models import MODELS
from foundation.part_names import is_import_path

LossFn = Callable[[Tensor, Tensor], Tensor]
MetricFn = Callable[[Tensor, Tensor], Tensor | float]


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """The fraction of rows whose largest output is the target class."""
    return (outputs.argmax(1) == targets).float().mean()


LOSSES: dict[str, LossFn] = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}
METRICS: dict[str, MetricFn] = {"accuracy": accuracy}


def resolve(key: str, path: str) -> Any:
    """The object an import path names, or ConfigError naming `key` and what failed."""
    module_name, _, attribute = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raised on import
        raise ConfigError(
            f"{key} = {path!r}: cannot import {module_name} ({type(err).__name__}: {err})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} = {path!r}: {module_name} has no attribute {attribute}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} = {path!r} is not callable ({type(obj).__name__})")
    return obj


def named(key: str, name: str, builtins: Mapping[str, Any]) -> Any:
    """A built-in by name, or user code by import path (config validation has already
    checked that a name without ':' is a built-in)."""
    return resolve(key, name) if is_import_path(name) else builtins[name]


def call_with_context(
    key: str, factory: Callable[..., Any], kwargs: Mapping[str, Any], context: Mapping[str, Any]
) -> Any:
    """factory(**kwargs, plus each context value whose name the factory takes); an error
    it raises becomes ConfigError naming `key`."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: kwargs only
        params = {}  # type: ignore[assignment]
    extra = {k: v for k, v in context.items() if k in params and k not in kwargs}
    try:
        return factory(**kwargs, **extra)
    except Exception as err:
        raise ConfigError(
            f"{key}: {object_path(factory)}(…) raised {type(err).__name__}: {err}"
        ) from None


def object_path(obj: Any) -> str:
    """`module:qualname` of a class or function (how a config names it); objects defined
    in a script read `__main__:Name`, which only that script can import."""
    module = getattr(obj, "__module__", None) or "__main__"
    return f"{module}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def as_float(value: Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


# ---- the parts of one run ----------------------------------------------------------


class DataSource(Protocol):
    def load(self, root: str) -> Dataset: ...


@dataclass(frozen=True)
class BuiltinData:
    name: str

    def load(self, root: str) -> Dataset:
        return load_dataset(self.name, root)


@dataclass(frozen=True)
class LoaderData:
    """A user callable returning (train, test); it runs where the data is needed."""

    loader: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = "data"
    key: str = "data.dataset"

    def load(self, root: str) -> Dataset:
        loaded = call_with_context(self.key, self.loader, self.kwargs, {"root": root})
        try:
            return as_dataset(self.name, loaded, f"{self.key} = {self.name!r}")
        except DatasetError as err:
            raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class InMemoryData:
    """Data handed to the Python API as tensors or Datasets (travels with the run)."""

    dataset: Dataset

    def load(self, root: str) -> Dataset:
        return self.dataset


@dataclass(frozen=True)
class Parts:
    model: Callable[..., nn.Module]
    model_kwargs: Mapping[str, Any]
    data: DataSource
    loss: LossFn
    metric: MetricFn | None
    metric_name: str | None
    """"accuracy" (reported as *_accuracy), "metric" (a user metric, *_metric) or None."""

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        model: Callable[..., nn.Module] | None = None,
        data: DataSource | None = None,
        loss: LossFn | None = None,
        metric: MetricFn | None = None,
    ) -> Parts:
        """Resolve the config's names here (built-ins, or import paths imported now);
        a part given as an object (the Python API) is used as it is instead."""
        dataset = config.data.dataset
        if data is None:
            data = (
                LoaderData(resolve("data.dataset", dataset), dict(config.data.kwargs), dataset)
                if is_import_path(dataset) else BuiltinData(dataset)
            )  # fmt: skip
        metric_name, metric_fn = (
            ("metric", metric) if metric is not None
            else metric_of(config.train.metric, config.train.loss)
        )  # fmt: skip
        return cls(
            model or named("model.arch", config.model.arch, MODELS),
            dict(config.model.kwargs),
            data,
            loss or named("train.loss", config.train.loss, LOSSES),
            metric_fn,
            metric_name,
        )

    @property
    def classifies(self) -> bool:
        """Cross-entropy on class scores: outputs are averaged as probabilities."""
        return self.loss is F.cross_entropy

    def load_data(self, config: Config) -> Dataset:
        """The run's data as the replicas see it (a validation part held out if asked)."""
        return held_out(self.data.load(config.data.root), config.data.validation)

    def new_model(self, data: Dataset, seed: int) -> nn.Module:
        """A fresh model for `data`, initialised from `seed` (the global RNG untouched)."""
        context = {"input_shape": data.input_shape, "num_classes": data.num_classes}
        return self.new_model_for(context, seed)

    def new_model_for(self, context: Mapping[str, Any], seed: int) -> nn.Module:
        """A fresh model given the data's input_shape and num_classes (`context`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = call_with_context("model.arch", self.model, self.model_kwargs, context)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.arch built a {type(model).__name__}, not an nn.Module")
        return model


def metric_kind(name: str, loss: str) -> str | None:
    """How the reports name train.metric, without importing anything: "accuracy",
    "metric" (a user's) or None (auto with a loss other than cross entropy, or none)."""
    if name == "auto":
        name = "accuracy" if loss == "cross_entropy" else "none"
    return None if name == "none" else "metric" if is_import_path(name) else name


def metric_of(name: str, loss: str) -> tuple[str | None, MetricFn | None]:
    """train.metric as (how the reports name it, the function); auto: accuracy with the
    built-in cross entropy, else none (the loss is the headline)."""
    kind = metric_kind(name, loss)
    if kind is None:
        return None, None
    return kind, resolve("train.metric", name) if kind == "metric" else METRICS[kind]


CHECK_BATCH = 4  # rows of the one batch that check() puts through the model and the loss


def check(parts: Parts, config: Config) -> Dataset:
    """Load the data, build the model once and put one batch through it, the loss and
    the metric; each failure is one line naming its config key (ConfigError). Returns
    the data (so a caller that checks on the data's node need not load it twice)."""
    data = parts.load_data(config)
    if config.data.batch_size > len(data.train.y):
        raise ConfigError(
            f"data.batch_size = {config.data.batch_size} exceeds the {len(data.train.y)} "
            f"training examples of {config.data.dataset}"
        )
    model = parts.new_model(data, seed=0)
    arch, loss_name = config.model.arch, config.train.loss
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.arch = {arch!r} has no trainable parameters")
    x, y = data.train.x[:CHECK_BATCH], data.train.y[:CHECK_BATCH]
    outputs = _checked_call(
        f"model.arch = {arch!r} cannot take a batch of data.dataset (inputs "
        f"{tuple(x.shape)} {x.dtype})", lambda: model(x)
    )  # fmt: skip
    if not isinstance(outputs, torch.Tensor):  # a tuple, a dict: the replicas average tensors
        raise ConfigError(
            f"model.arch = {arch!r} returned a {type(outputs).__name__}: its forward must "
            "return one tensor of outputs (the loss, the ensemble and packing take that)"
        )
    value = _checked_call(
        f"train.loss = {loss_name!r} failed on outputs {tuple(outputs.shape)} and targets "
        f"{tuple(y.shape)} {y.dtype}", lambda: parts.loss(outputs, y)
    )  # fmt: skip
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"train.loss = {loss_name!r} returned {shape}: it must return a scalar")
    if not value.requires_grad:
        raise ConfigError(f"train.loss = {loss_name!r} does not depend on the model's outputs")
    if not torch.isfinite(value):
        raise ConfigError(f"train.loss = {loss_name!r} is {float(value)} on the first batch")
    metric = parts.metric
    if metric is not None:
        what = f"train.metric = {config.train.metric!r} failed"
        _checked_call(what, lambda: float(metric(outputs.detach(), y)))
    return data


def _checked_call(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ConfigError:
        raise
    except Exception as err:
        first = (str(err).splitlines() or [""])[0]
        raise ConfigError(f"{what}: {type(err).__name__}: {first}") from None
