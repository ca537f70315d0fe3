"""[sweep.space]: distributions over run-config keys, and run configs as flat key → value.

A trial's config is the base config with some keys replaced, so everything here speaks
flat keys ("algorithm.lr") and goes back to a Config only through load_config, which
validates each value exactly as a run config's --set would.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from foundation.config import Config, ConfigError, load_config, to_dict

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
# Set per trial by the sweep itself.
MANAGED = ("run.name", "run.storage")
SHAPE = "{grid = [...]}, {choice = [...]}, {uniform = [a, b]} or {loguniform = [a, b]}"


class SweepError(ConfigError):
    """A bad sweep file or sweep option, said in one line."""


@dataclass(frozen=True)
class Distribution:
    """One [sweep.space] entry: kind (grid, choice, uniform, loguniform) and its values."""

    kind: str
    values: tuple[Any, ...]

    def for_tune(self) -> Any:
        from ray import tune  # Tune only where a sweep starts, not to read a sweep file

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        return tune.uniform(low, high) if self.kind == "uniform" else tune.loguniform(low, high)

    def for_pbt(self) -> Any:
        """PBT's mutation: a list (shifted to a neighbour) or a domain (× 0.8 / 1.2)."""
        return list(self.values) if self.kind in ("grid", "choice") else self.for_tune()

    def clip(self, value: Any) -> Any:
        """Keep PBT's × 1.2 / × 0.8 inside the declared range."""
        if self.kind in ("uniform", "loguniform") and isinstance(value, (int, float)):
            return min(max(float(value), self.values[0]), self.values[1])
        return value

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


def config_keys() -> list[str]:
    return [f"{s}.{k}" for s, values in to_dict(Config()).items() for k in values]


def flat(config: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in to_dict(config).items() for k, v in values.items()}


def raw(value: Any) -> str:
    """A value as --set text that load_config reads back to it (text fields keep it whole)."""
    if hasattr(value, "item"):  # numpy scalars from Tune's samplers
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # inf and nan are TOML too
    return str(value)


def build_config(values: dict[str, Any]) -> Config:
    """A run config from flat key → value (every key, or overrides of the defaults)."""
    return load_config(None, [f"{key}={raw(value)}" for key, value in values.items()])


def unknown_key(key: str, known: list[str], what: str) -> SweepError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return SweepError(f"unknown {what} {key!r}{hint}")


def _declared(key: str) -> str:
    """The declared type of a config key, as text ("float | str")."""
    section, _, name = key.partition(".")
    cls = type(getattr(Config(), section))
    return next(str(f.type) for f in fields(cls) if f.name == name)


def _bounds(where: str, key: str, kind: str, values: list[Any]) -> list[float]:
    """[low, high] of a uniform or loguniform entry, checked (a float key, low < high)."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numeric:
        raise SweepError(f"{where}: {kind} needs two numbers [low, high], got {values!r}")
    if "float" not in _declared(key):
        raise SweepError(f"{where}: {key} takes whole numbers or text: use grid or choice")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SweepError(f"{where}: {kind} needs low < high, got [{low:g}, {high:g}]")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{where}: loguniform needs low > 0, got [{low:g}, {high:g}]")
    return [low, high]


def parse_distribution(key: str, spec: Any, base: Config) -> Distribution:
    """One space entry, checked against the key's type and range (on top of `base`)."""
    where = f'sweep.space."{key}"'
    if key not in config_keys():
        raise unknown_key(key, config_keys(), "config key in sweep.space")
    if key in MANAGED:
        raise SweepError(f"{where}: {key} is set by the sweep for each trial")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SweepError(f"{where} must be one of {SHAPE}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        values = _bounds(where, key, kind, values)
    for value in values:  # each value (or bound) must make a valid run on its own
        try:
            build_config({**flat(base), key: value})
        except ConfigError as err:
            raise SweepError(f"{where}: {err}") from None
    return Distribution(kind, tuple(values))


def parse_space(table: Any, base: Config) -> dict[str, Distribution]:
    if not isinstance(table, dict) or not table:
        raise SweepError(
            'sweep.space is empty: add e.g. "algorithm.lr" = {loguniform = [0.01, 0.3]}'
        )
    return {key: parse_distribution(key, spec, base) for key, spec in table.items()}
