"""fit()'s arguments as a run: a Config, and the Parts when objects were given.

Objects are recorded in the config by their import path (module:qualname) so that
config.toml says what was trained and a resume with other code is refused; in-memory
data is recorded by a fingerprint of its bytes. Names stay names: a config that only
names its parts needs no Parts here (every replica resolves them on its node).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from foundation.config import Config, config_from_text, load_config, to_toml
from foundation.data.user import as_dataset
from foundation.fields import ConfigError
from foundation.parts import InMemoryData, LoaderData, Parts, object_path

ConfigLike = Config | str | Path | None
DataLike = Any
"""(train, test), each an (inputs, targets) pair or a map-style Dataset; or a callable
returning that (it then runs on the replicas' nodes)."""


def as_config(config: ConfigLike, overrides: Sequence[str]) -> Config:
    """A Config from a Config, a TOML path or nothing (the defaults), then --set overrides."""
    if isinstance(config, Config):
        return config_from_text(to_toml(config), list(overrides))
    return load_config(config, list(overrides))


def code_path(obj: Any, key: str = "model.arch") -> str:
    """An object's import path in a form the config accepts (a nested function's
    `<locals>` becomes `locals`: it names the object, it is not imported again). A lambda
    has no name of its own: every one records as `_lambda_`, so a resume with another
    lambda would be taken for the same run; it is refused."""
    path = object_path(obj)
    if "<lambda>" in path:
        raise ConfigError(
            f"{key}: a lambda cannot be recorded in config.toml (every lambda is named "
            "<lambda>, so resuming with another one could not be refused); give a named "
            "function or class"
        )
    return re.sub(r"[^\w.:]", "_", path).replace("..", ".")


def fingerprint(data: Any) -> str:
    """A short sha256 of in-memory data's tensors (so a resume with other data fails)."""
    digest = hashlib.sha256()
    for split in (data.train, data.test):
        for tensor in (split.x, split.y):
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prepare(
    config: Config,
    *,
    model: Callable[..., nn.Module] | None,
    model_kwargs: Mapping[str, Any] | None,
    data: DataLike | None,
    data_kwargs: Mapping[str, Any] | None,
    loss: Callable[..., Any] | str | None,
    metric: Callable[..., Any] | str | None,
) -> tuple[Config, Parts | None]:
    """Record the given objects in the config and build the Parts that carry them
    (None when everything is named by the config)."""
    given: dict[str, Any] = {}
    if model_kwargs is not None:
        config.model.kwargs = dict(model_kwargs)
    if data_kwargs is not None:
        config.data.kwargs = dict(data_kwargs)
    if model is not None:
        config.model.arch, given["model"] = code_path(model, "model"), model
    if data is not None:
        given["data"] = _data_source(config, data)
    for key, value in (("loss", loss), ("metric", metric)):
        if isinstance(value, str):
            setattr(config.train, key, value)
        elif value is not None:
            setattr(config.train, key, code_path(value, key))
            given[key] = value
    checked = config_from_text(to_toml(config))  # validates, and proves it is plain TOML
    if not given:
        return checked, None
    return checked, Parts.from_config(checked, **given)


def in_memory(**_: Any) -> Any:
    """What config.toml names for data that was handed to fit() as tensors: it cannot be
    loaded again from the config (the flatness and comparison jobs need a loader)."""
    raise ConfigError(
        "this run's data was given to widevalley.fit as tensors, which config.toml cannot "
        "load again: give fit a data callable, or name one in data.dataset"
    )


def _data_source(config: Config, data: DataLike) -> Any:
    if callable(data) and not hasattr(data, "__getitem__"):
        config.data.dataset = code_path(data, "data")
        return LoaderData(data, dict(config.data.kwargs), config.data.dataset)
    try:
        dataset = as_dataset("data", data, "data")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    config.data.dataset = "widevalley.arguments:in_memory"
    config.data.kwargs = {"fingerprint": fingerprint(dataset)}
    return InMemoryData(dataset)
