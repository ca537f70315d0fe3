"""One way in for every part of a run, built-in or the user's: a name or an import path.

model.arch, data.dataset, train.loss and train.metric each name a built-in (`mlp`,
`mnist1d`, `cross_entropy`, `accuracy`) or user code as `package.module:attribute`, the
form of Python entry points. An import path is imported where the part is needed — in
the driver's checks and on every replica's node — from the job's working directory
(`ray job submit --working-dir`) or an installed package. A config that names code runs
that code, as any Python entry point does.

Factories are called with their keyword arguments from the config (model.kwargs,
data.kwargs), plus the context they ask for by name: a model factory that takes
`input_shape` or `num_classes` gets them from the data, a data loader that takes `root`
gets data.root. Built-ins are called the same way.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.fields import ConfigError
from foundation.names import is_import_path

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
