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

Each method is tuned on its own axes. `[sweep]` lists, per method, its trials (each a list
of overrides, one sweep run); a `[sweep.<model>]` table's entries replace the shared ones
for that model, since the MLP and the CNN may want different values (e.g. a learning
rate). `[fixed]` holds, per method, overrides every run of it shares (its sweep and final
runs), on top of its base config: settings that are chosen, not swept.

    [fixed]
    parle = ["algorithm.coupling_period=1", "algorithm.momentum=0.0"]

    [sweep]
    sgd = [["algorithm.lr=0.05"], ["algorithm.lr=0.1"]]
    parle = [["algorithm.inner_lr=0.1"], ["algorithm.inner_lr=0.2"]]

    [sweep.cnn1d]                            # replaces sweep.parle for the cnn1d only
    parle = [["algorithm.inner_lr=0.05"], ["algorithm.inner_lr=0.1"]]

At most MAX_TRIALS trials per method and model: the protocol must fit its time budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.fields import ConfigError, read_toml, toml_value
from jobs.compare.methods import MAX_TRIALS, SWEPT

Trials = list[list[str]]
"""A method's sweep: one list of overrides per trial (one sweep run each)."""


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
    sweep: dict[str, Trials]
    """method → its trials, for every model without its own ([sweep])."""
    flatness: FlatnessSpec
    sweep_models: dict[str, dict[str, Trials]] = field(default_factory=dict)
    """model → method → its trials, replacing sweep's for that model ([sweep.<model>])."""
    fixed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """method → overrides all its runs share, not swept ([fixed])."""
    overrides: tuple[str, ...] = ()
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    """data.kwargs of every run ([compare] data_kwargs)."""
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """model → its model.kwargs ([compare.model_kwargs]); models not named get none."""
    quick_seeds: int = 2
    quick_steps: int = 400
    source: str = ""

    def trials(self, model: str, method: str) -> Trials:
        """The method's trials for this model: its own, the shared ones, or the base config."""
        return self.sweep_models.get(model, {}).get(method) or self.sweep.get(method) or [[]]


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


def hp_label(hp: Sequence[str]) -> str:
    """scoping.gamma0=0.01 → gamma0=0.01 (the key's last part), joined by commas; a
    trial's part of its run name ("base" for the base config)."""
    parts = (o.partition("=") for o in hp)
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in parts) or "base"


def _overrides(value: Any, what: str) -> list[str]:
    items = [str(s) for s in _list(value, what)]
    bad = [s for s in items if "=" not in s]
    if bad:
        raise CompareError(f"{what}: {bad[0]!r} is not KEY=VALUE")
    return items


def _trials(value: Any, what: str) -> Trials:
    """One method's trials: 1 … MAX_TRIALS lists of overrides, each its own run name."""
    trials = [_overrides(t, f"{what} entry") for t in _list(value, what)]
    if not trials or len(trials) > MAX_TRIALS:
        raise CompareError(
            f"{what} has {len(trials)} trials: 1 to {MAX_TRIALS} per method and model"
        )
    labels = [hp_label(t) for t in trials]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None:  # two runs of one name would share one run directory
        raise CompareError(f"{what} tries {twice} twice")
    return trials


def _sweep(
    raw: dict[str, Any], models: tuple[str, ...]
) -> tuple[dict[str, Trials], dict[str, dict[str, Trials]]]:
    """[sweep]: per method its trials, and per model a table of methods' own trials."""
    shared: dict[str, Trials] = {}
    per_model: dict[str, dict[str, Trials]] = {}
    for key, value in _table(raw.get("sweep", {}), "[sweep]", "of methods' trials").items():
        if key in SWEPT:
            shared[key] = _trials(value, f"sweep.{key}")
        elif key in models and isinstance(value, dict):
            unknown = [m for m in value if m not in SWEPT]
            if unknown:
                raise CompareError(f"sweep.{key}.{unknown[0]}: not a swept method "
                                   f"({', '.join(SWEPT)})")  # fmt: skip
            per_model[key] = {m: _trials(v, f"sweep.{key}.{m}") for m, v in value.items()}
        else:
            raise CompareError(
                f"sweep.{key}: neither a swept method ({', '.join(SWEPT)}) nor a table "
                "[sweep.<model>] of a model in compare.models"
            )
    return shared, per_model


def _fixed(raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """[fixed]: per swept method, overrides every run of it shares."""
    fixed = _table(raw.get("fixed", {}), "[fixed]", "of methods' overrides")
    unknown = [m for m in fixed if m not in SWEPT]
    if unknown:
        raise CompareError(f"fixed.{unknown[0]}: not a swept method ({', '.join(SWEPT)})")
    return {m: tuple(_overrides(v, f"fixed.{m}")) for m, v in fixed.items()}


def _models_and_steps(c: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, int]]:
    """compare.models and compare.steps: every model needs its own budget."""
    models = tuple(str(m) for m in _list(c.get("models", []), "compare.models"))
    steps = {str(k): int(v) for k, v in c.get("steps", {}).items()}
    if not models or any(m not in steps for m in models):
        raise CompareError("compare.models must be non-empty and each needs compare.steps.<model>")
    return models, steps


def _table(
    value: Any, what: str, kind: str = "of keyword arguments, e.g. {hidden = 64}"
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CompareError(f"{what} must be a table {kind}")
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
    methods = _methods(raw)
    models, steps = _models_and_steps(c)
    sweep, sweep_models = _sweep(raw, models)
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
        sweep_models=sweep_models,
        fixed=_fixed(raw),
        flatness=flatness,
        overrides=tuple(str(s) for s in _list(c.get("set", []), "compare.set")),
        data_kwargs=data_kwargs,
        model_kwargs=model_kwargs,
        quick_seeds=int(c.get("quick_seeds", 2)),
        quick_steps=int(c.get("quick_steps", 400)),
        source=str(path),
    )
