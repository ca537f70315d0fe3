"""The sweep file: a base run config, the [sweep] options and [sweep.space], all validated.

`--set sweep.key=v` and `--set sweep.space.KEY={...}` change the sweep, any other --set
the base run config, so one command line can reshape both before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from foundation.config import (
    UNCOUPLED_ALGORITHMS,
    Config,
    ConfigError,
    load_config,
    parse_value,
    to_dict,
)
from foundation.fields import checked_value, knob, read_toml
from foundation.parts import metric_kind
from foundation.storage import name_problem
from jobs import CONFIG_DIR
from jobs.sweep.space import Distribution, SweepError, parse_space, raw, unknown_key

METRICS = {"center_test_accuracy": "max", "center_test_metric": "max", "center_test_loss": "min",
           "replica_mean_test_accuracy": "max", "replica_mean_test_metric": "max",
           "replica_mean_test_loss": "min", "mean_loss": "min", "mean_distance": "min"}  # fmt: skip
# What a run can take over from another run's checkpoint (Coordinator allow_changes):
# the only keys PBT perturbs during a run.
PBT_MUTABLE = ("algorithm.lr", "scoping.gamma0")


@dataclass(kw_only=True)
class AshaConfig:
    grace_period: int = knob(1, lo=1)
    """Rounds a trial always gets before ASHA may stop it (its first rung)."""
    reduction_factor: float = knob(2.0, lo=1.0, hi=100.0, open_lo=True)
    """η_ASHA: at each rung only the best 1/reduction_factor of trials go on."""


@dataclass(kw_only=True)
class PbtConfig:
    perturbation_interval: int = knob(20, lo=1)
    """Rounds between two exploit/explore decisions of one trial."""
    quantile_fraction: float = knob(0.25, lo=0.0, hi=0.5, open_lo=True)
    """Fraction of trials in the bottom (copies a top trial) and the top quantile."""
    resample_probability: float = knob(0.25, lo=0.0, hi=1.0)
    """Probability of redrawing a perturbed key from its distribution instead of × 0.8 / 1.2."""
    synch: bool = knob(False)
    """Wait for every trial at each perturbation point (reproducible decisions, idle slots)."""


@dataclass(kw_only=True)
class SweepConfig:
    name: str = knob("sweep")
    """Sweep name; the sweep directory is <run.storage>/<name>."""
    metric: str = knob("headline", choices=("headline", *METRICS))
    """Reported metric the schedulers and the best trial are judged by; headline: the
    number the runs are ranked by (summary.json `headline`: the center's test accuracy,
    metric or loss; the replicas' mean for uncoupled runs, sgd and esgd)."""
    mode: str = knob("auto", choices=("auto", "max", "min"))
    """max or min; auto = max for accuracies, min for losses and distances."""
    num_samples: int = knob(1, lo=1, hi=100_000)
    """Draws of the random distributions; every draw runs each grid point once."""
    scheduler: str = knob("fifo", choices=("fifo", "asha", "pbt"))
    """fifo (run every trial to the end), asha (stop bad trials early) or pbt."""
    max_concurrent_trials: int = knob(0, lo=0)
    """Trials at once; 0 = as many full trials as the cluster holds now."""
    coordinator_cpus: float = knob(1.0, lo=0.0, hi=256.0, open_lo=True)
    """CPUs reserved for each trial's coordinator (bundle 0 of its placement group)."""
    gpus_per_replica: float | str = knob("auto")
    """GPUs per replica in every trial, or "auto": resources.gpus_per_replica when set,
    else 1 when the cluster has y GPUs (y per trial), a share when it has fewer, 0 without."""
    replicas: str = knob("actors", choices=("actors", "inprocess"))
    """actors (one actor per replica unit, in the trial's bundles) or inprocess (the
    replicas run one after another inside the trial's process: tiny trials only)."""
    seed: int = knob(0, lo=0)
    """Seed of the random draws, so a sweep samples the same trials again."""
    max_failures: int = knob(0, lo=0, hi=100)
    """Times Tune restarts a failed trial (it resumes from its run's last checkpoint)."""
    asha: AshaConfig = field(default_factory=AshaConfig)
    pbt: PbtConfig = field(default_factory=PbtConfig)

    @property
    def direction(self) -> str:
        return METRICS[self.metric] if self.mode == "auto" else self.mode


@dataclass(frozen=True)
class Sweep:
    sweep: SweepConfig
    base: Config
    space: dict[str, Distribution]
    source: str

    @property
    def uri(self) -> str:
        """The sweep directory: absolute when local (Tune needs that), else a URI."""
        root = join(self.base.run.storage, self.sweep.name)
        return root if "://" in root else os.path.abspath(root)

    @property
    def mutable(self) -> tuple[str, ...]:
        """Keys PBT perturbs: the space's keys that a run can take over a checkpoint with."""
        return tuple(k for k in self.space if k in PBT_MUTABLE)


def join(root: str, *parts: str) -> str:
    """A path or URI below `root` (os.path.join would mangle s3://)."""
    return "/".join([root.rstrip("/"), *parts])


def _fill(obj: Any, table: dict[str, Any], prefix: str) -> None:
    """Set a sweep dataclass from its TOML table: known keys, declared types, ranges."""
    known = {f.name: f for f in fields(obj)}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name not in known:
            raise unknown_key(key, [f"{prefix}.{n}" for n in known], "sweep key")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SweepError(f"{key} must be a table, got {value!r}")
            _fill(current, value, key)
            continue
        try:
            setattr(obj, name, checked_value(key, value, known[name]))
        except SweepError:
            raise
        except ConfigError as err:  # said as a sweep error: the sweep file is at fault
            raise SweepError(str(err)) from None


def _base_path(name: str, sweep_file: Path) -> Path:
    for candidate in (sweep_file.parent / name, CONFIG_DIR / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise SweepError(
        f"base config {name!r} of {sweep_file} not found (next to it or in {CONFIG_DIR})"
    )


def _set_in(table: dict[str, Any], key: str, value: Any) -> None:
    """`sweep.space.algorithm.lr` keeps the config key whole; other keys nest by dots."""
    head, _, rest = key.partition(".")
    if head == "space" and rest:
        table.setdefault("space", {})[rest] = value
    elif rest:
        _set_in(table.setdefault(head, {}), rest, value)
    else:
        table[head] = value


def _run_sets(table: dict[str, Any]) -> list[str]:
    """The sweep file's inline run sections ([run], [algorithm], …) as --set items."""
    run_sets: list[str] = []
    for section, values in table.items():
        if not isinstance(values, dict):
            raise unknown_key(section, ["base", "sweep", *to_dict(Config())], "sweep file key")
        run_sets += [f"{section}.{key}={raw(value)}" for key, value in values.items()]
    return run_sets


def _apply_overrides(overrides: list[str], sweep_table: dict[str, Any]) -> list[str]:
    """Put `sweep.` overrides into the [sweep] table; returns the others (for the run)."""
    run_sets: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise SweepError(f"--set expects key=value, got {item!r}")
        if key.strip().startswith("sweep."):
            _set_in(sweep_table, key.strip().removeprefix("sweep."), parse_value(text.strip()))
        else:
            run_sets.append(item)
    return run_sets


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Sweep file ← --set overrides; base config, sweep options and space all validated."""
    path = Path(path)
    table = read_toml(path, "sweep", SweepError)
    base_name = table.pop("base", None)
    sweep_table = table.pop("sweep", None)
    if not isinstance(sweep_table, dict):
        raise SweepError(
            f"{path} has no [sweep] table: a run config runs with python -m jobs.train"
        )
    # The file's run sections first, so that --set overrides them.
    run_sets = _run_sets(table) + _apply_overrides(overrides or [], sweep_table)
    if base_name is not None and not isinstance(base_name, str):
        raise SweepError(f"base must be the path of a run config, got {base_name!r}")
    base = load_config(_base_path(base_name, path) if base_name else None, run_sets)
    space_table = sweep_table.pop("space", None)
    sweep = SweepConfig()
    _fill(sweep, sweep_table, "sweep")
    space = parse_space(space_table, base)
    if sweep.metric == "headline":
        sweep.metric = _headline_of(base, space)
    _check_metric_is_reported(sweep.metric, base)
    problem = name_problem(sweep.name)
    if problem is not None:  # the sweep directory is <run.storage>/<sweep.name>
        raise SweepError(f"sweep.name = {sweep.name!r} {problem}: it must be a plain name")
    result = Sweep(sweep=sweep, base=base, space=space, source=str(path))
    if sweep.scheduler == "pbt" and not result.mutable:
        raise SweepError(
            f"sweep.scheduler = pbt perturbs {' or '.join(PBT_MUTABLE)} during a run: "
            "put at least one of them in sweep.space"
        )
    return result


def _headline_of(base: Config, space: dict[str, Distribution]) -> str:
    """sweep.metric = headline: the name the runs' summary.json gives their headline."""
    kinds = {base.algorithm.kind}
    if "algorithm.kind" in space:
        kinds = {str(v) for v in space["algorithm.kind"].values}
    coupled = {k not in UNCOUPLED_ALGORITHMS for k in kinds}
    if len(coupled) > 1:
        raise SweepError(
            f"sweep.metric = headline: the space's algorithms {sorted(kinds)} rank by "
            "different numbers (uncoupled runs by their replicas' mean, the others by "
            "their center); name one, e.g. sweep.metric = center_test_accuracy"
        )
    kind = metric_kind(base.train.metric, base.train.loss) or "loss"
    where = "center" if coupled.pop() else "replica_mean"
    return f"{where}_test_{kind}"


def _check_metric_is_reported(metric: str, base: Config) -> None:
    """A metric the runs never report would rank every trial as missing."""
    kind = metric_kind(base.train.metric, base.train.loss)
    wanted = metric.removeprefix("center_test_").removeprefix("replica_mean_test_")
    if wanted in ("accuracy", "metric") and wanted != kind:
        reported = f"center_test_{kind}" if kind else "center_test_loss (no metric)"
        raise SweepError(
            f"sweep.metric = {metric}, but the runs report {reported} "
            f"(train.loss = {base.train.loss!r}, train.metric = {base.train.metric!r})"
        )
