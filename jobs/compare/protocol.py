"""The comparison protocol: what a comparison TOML (jobs/configs/compare_*.toml) says.

Every value is checked here, before any run config is built, so that a bad file is one
line (CompareError, a ConfigError: exit status 2) and not a failure halfway through.

A comparison of the user's own model, data and loss names them as a run config does
(docs/your-model.md), each a built-in name or an import path `package.module:attribute`
importable where the runs train (the working directory, or an installed package):

    [compare]
    dataset = "mypkg.data:load"              # data.dataset of every run
    data_kwargs = {length = 40}              # data.kwargs of every run (optional)
    models = ["mlp", "mypkg.nets:Net"]       # model.arch of the runs, one table each
    set = ["train.loss=mypkg.losses:huber"]  # any other key, e.g. the loss or the metric

    [compare.steps]                          # gradient evaluations per replica, per model
    mlp = 6000
    "mypkg.nets:Net" = 2000                  # (a key with ':' or '.' is quoted in TOML)

    [compare.model_kwargs]                   # model.kwargs per model (optional)
    "mypkg.nets:Net" = {hidden = 64}

Data keyword arguments go in `[compare] data_kwargs`, a table, rather than in `set`
(`"data.kwargs={length = 40}"` there works too, and wins, as `set` comes later): a TOML
table is checked as one here and needs no quoting inside a string. A model's entry in
`models` is its name in the tables, the run names (<model>-<method>-s<seed>: an import
path is a valid run name) and --models; one import path is one model, so the same class
with two sets of kwargs needs two importable names. The loss and the metric apply to
every run (`set`); the table and every choice follow the runs' headline: the test
accuracy, a user's metric, or the test loss when the runs have no metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.fields import ConfigError, read_toml, toml_value
from jobs.compare.methods import SWEPT


class CompareError(ConfigError):
    """Bad comparison input, said in one line."""


@dataclass(frozen=True, kw_only=True)
class FlatnessSpec:
    """How every final run's model(s) are measured: the same draws and subset for all."""

    subset: int = 1000
    draws: int = 20
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    table_sigmas: tuple[float, float] = (0.1, 0.3)
    lanczos_steps: int = 30


@dataclass(frozen=True, kw_only=True)
class Protocol:
    dataset: str
    models: tuple[str, ...]
    seeds: int
    replicas: int
    storage: str
    output: str
    validation: float
    sweep_seed: int
    steps: dict[str, int]
    methods: dict[str, str]
    sweep: dict[str, list[list[str]]]
    flatness: FlatnessSpec
    overrides: tuple[str, ...] = ()
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    """data.kwargs of every run ([compare] data_kwargs)."""
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """model → its model.kwargs ([compare.model_kwargs]); models not named get none."""
    quick_seeds: int = 2
    quick_steps: int = 400
    source: str = ""


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise CompareError(f"{what} must be a list, got {value!r}")
    return value


def _methods(raw: dict[str, Any]) -> dict[str, str]:
    """[methods]: a base config for every swept method (sgd_long and ensemble reuse sgd's)."""
    methods = {str(k): str(v) for k, v in raw.get("methods", {}).items()}
    missing = [m for m in SWEPT if m not in methods]
    if missing:
        raise CompareError(f"[methods] must name a base config for {', '.join(missing)}")
    return methods


def _sweep(raw: dict[str, Any]) -> dict[str, list[list[str]]]:
    """[sweep]: per method, a list of override lists, each one sweep run."""
    return {
        str(m): [[str(s) for s in _list(o, f"sweep.{m} entry")] for o in _list(v, f"sweep.{m}")]
        for m, v in raw.get("sweep", {}).items()
    }


def _models_and_steps(c: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
    """compare.models and compare.steps: every model needs its own budget."""
    models = tuple(str(m) for m in _list(c.get("models", []), "compare.models"))
    steps = {str(k): int(v) for k, v in c.get("steps", {}).items()}
    if not models or any(m not in steps for m in models):
        raise CompareError("compare.models must be non-empty and each needs compare.steps.<model>")
    return models, steps


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CompareError(f"{what} must be a table of keyword arguments, e.g. {{hidden = 64}}")
    return {str(k): v for k, v in value.items()}


def _kwargs(c: dict[str, Any], models: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """[compare] data_kwargs and [compare.model_kwargs]: tables, the latter per model."""
    data = _table(c.get("data_kwargs", {}), "compare.data_kwargs")
    per_model = _table(c.get("model_kwargs", {}), "compare.model_kwargs")
    unknown = [m for m in per_model if m not in models]
    if unknown:
        raise CompareError(
            f"compare.model_kwargs names {', '.join(unknown)}: not in compare.models"
        )
    return data, {m: _table(v, f"compare.model_kwargs.{m!r}") for m, v in per_model.items()}


def kwargs_override(key: str, kwargs: dict[str, Any]) -> list[str]:
    """A --set item for a kwargs table (an inline TOML table), or none when it is empty."""
    return [f"{key}={toml_value(kwargs)}"] if kwargs else []


def _flatness(fl: dict[str, Any]) -> FlatnessSpec:
    """[flatness]: the table's two σ columns must be points of the measured curve."""
    sigmas = tuple(float(s) for s in fl.get("sigmas", FlatnessSpec.sigmas))
    table_sigmas = tuple(float(s) for s in fl.get("table_sigmas", FlatnessSpec.table_sigmas))
    if len(table_sigmas) != 2 or any(s not in sigmas for s in table_sigmas):
        raise CompareError(f"flatness.table_sigmas must be two of flatness.sigmas {list(sigmas)}")
    return FlatnessSpec(
        subset=int(fl.get("subset", 1000)),
        draws=int(fl.get("draws", 20)),
        sigmas=sigmas,
        table_sigmas=(table_sigmas[0], table_sigmas[1]),
        lanczos_steps=int(fl.get("lanczos_steps", 30)),
    )


def load_protocol(path: str | Path) -> Protocol:
    raw = read_toml(Path(path), "comparison config", CompareError)
    c = raw.get("compare", {})
    methods, sweep = _methods(raw), _sweep(raw)
    models, steps = _models_and_steps(c)
    data_kwargs, model_kwargs = _kwargs(c, models)
    flatness = _flatness(raw.get("flatness", {}))
    return Protocol(
        dataset=str(c.get("dataset", "mnist1d")),
        models=models,
        seeds=int(c.get("seeds", 5)),
        replicas=int(c.get("replicas", 4)),
        storage=str(c.get("storage", "runs/compare")),
        output=str(c.get("output", "docs")),
        validation=float(c.get("validation", 0.2)),
        sweep_seed=int(c.get("sweep_seed", 100)),
        steps=steps,
        methods=methods,
        sweep=sweep,
        flatness=flatness,
        overrides=tuple(str(s) for s in _list(c.get("set", []), "compare.set")),
        data_kwargs=data_kwargs,
        model_kwargs=model_kwargs,
        quick_seeds=int(c.get("quick_seeds", 2)),
        quick_steps=int(c.get("quick_steps", 400)),
        source=str(path),
    )
