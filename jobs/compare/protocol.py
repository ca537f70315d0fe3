"""The comparison protocol: what a comparison TOML (jobs/configs/compare_*.toml) says.

Every value is checked here, before any run config is built, so that a bad file is one
line (CompareError, a ConfigError: exit status 2) and not a failure halfway through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.fields import ConfigError, read_toml
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
        quick_seeds=int(c.get("quick_seeds", 2)),
        quick_steps=int(c.get("quick_steps", 400)),
        source=str(path),
    )
