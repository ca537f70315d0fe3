"""Typed, ranged config fields: the machinery shared by run configs and sweep files.

A field is declared with knob(default, lo=…, hi=…, choices=…); checked_value() coerces a
value read from TOML or --set to the field's declared type and checks its range, and
fails with one line naming the key and what is allowed (ConfigError).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import Field, field
from pathlib import Path
from typing import Any

from foundation.errors import WideValleyError


class ConfigError(WideValleyError, ValueError):
    """A bad configuration, said in one line."""


def knob(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
    open_lo: bool = False,
) -> Any:
    """A config field with its allowed range; `open_lo` excludes `lo` itself."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "open_lo": open_lo}
    return field(default=default, metadata=meta)


IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""`package.module:attribute`, the form of entry points."""


def component(default: str, builtins: tuple[str, ...]) -> Any:
    """A field naming a built-in (one of `builtins`) or user code (`pkg.module:attr`)."""
    return field(default=default, metadata={"builtins": builtins})


def checked_value(key: str, value: Any, f: Field[Any]) -> Any:
    """`value` for field `f` (named `key`): coerced to its declared type, range-checked."""
    value = coerce(key, value, str(f.type))
    check_range(key, value, f.metadata)
    if isinstance(value, str) and "float" in str(f.type):
        check_auto(key, value)
    return value


def coerce(key: str, value: Any, declared: str) -> Any:
    """Check a value against its field's declared type; an int is fine where a float is."""
    if declared.startswith("dict"):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key} must be a table of keyword arguments, e.g. {{hidden = 64}}")
    allowed = {part.strip() for part in declared.split("|")}
    if "bool" in allowed or isinstance(value, bool):
        if "bool" in allowed and isinstance(value, bool):
            return value
        raise ConfigError(
            f"{key} must be {'true or false' if 'bool' in allowed else 'a number'}, got {value!r}"
        )
    if isinstance(value, int) and "float" in allowed:
        return float(value)
    if isinstance(value, float) and "int" in allowed and value.is_integer():
        return int(value)
    kinds = {"int": int, "float": float, "str": str}
    if any(isinstance(value, kinds[name]) for name in allowed if name in kinds):
        return value
    wanted = " or ".join(sorted(allowed)).replace("str", "text").replace("float", "a number")
    raise ConfigError(f"{key} must be {wanted.replace('int', 'a whole number')}, got {value!r}")


def check_range(key: str, value: Any, meta: Any) -> None:
    builtins = meta.get("builtins")
    if builtins is not None and value not in builtins and not IMPORT_PATH.match(str(value)):
        raise ConfigError(
            f"{key} = {value!r} is not one of {', '.join(builtins)}, "
            "nor an import path like mypkg.module:name"
        )
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(str, choices))}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    lo, hi, open_lo = meta.get("lo"), meta.get("hi"), meta.get("open_lo")
    if (
        math.isnan(value)
        or (lo is not None and (value < lo or (open_lo and value == lo)))
        or (hi is not None and value > hi)
    ):
        low = "-inf" if lo is None else f"{lo}"
        bracket = "(" if open_lo else "["
        raise ConfigError(
            f"{key} = {value} is out of range {bracket}{low}, {hi if hi is not None else 'inf'}]"
        )


def check_auto(key: str, value: float | str) -> None:
    if isinstance(value, str):
        if value != "auto":
            raise ConfigError(f'{key} must be a number >= 0 or "auto", got {value!r}')
    elif math.isnan(value) or value < 0:
        raise ConfigError(f'{key} = {value} is out of range [0, inf) (or "auto")')


def read_toml(
    path: Path, kind: str = "config", error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """A TOML file as a dict, or `error` in one line naming the `kind` of file."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{kind} file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise error(f"{kind} file {path} is not valid TOML: {err}") from None


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):  # an inline table: keys quoted, so any key round-trips
        pairs = (f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
