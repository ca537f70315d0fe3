"""`python -m jobs.sweep --config SWEEP.toml [--set key=value ...]`: a Ray Tune sweep of runs.

A sweep TOML names a base run config (`base = "rsgd.toml"`, and/or inline [run],
[algorithm], … sections) and a [sweep] table: the metric, the number of samples, the
scheduler (fifo, asha or pbt) and [sweep.space], distributions over any config key.
Each trial is one ordinary Wide Valley run — the same Coordinator, its run directory
under <run.storage>/<sweep.name>/runs/<trial id> — that reserves its coordinator and
all its replicas at once in one placement group, and reports one Tune result per
evaluation round. PBT takes over a better trial's run checkpoint with a perturbed η and
γ0. At the end: trials.parquet (printed as a table), best.toml (ready for jobs.train)
and plots/sweep.png in the sweep directory. Bad input fails before anything starts,
with one line and exit status 2; `--set sweep.key=v` and `--set sweep.space.KEY={...}`
change the sweep, any other `--set` the base run config.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ray

from cluster.actors import RayReplicaGroup, ResourceError, unit_bundles
from cluster.driver import one_line
from cluster.session import connect
from coordinator import checkpoint as run_checkpoint
from coordinator.coordinator import Coordinator, GroupFactory
from coordinator.groups import LocalGroup
from coordinator.resume import ResumeMismatch
from coordinator.rundir import RunDir
from foundation.config import (
    Config,
    ConfigError,
    check_batch_size,
    load_config,
    parse_value,
    to_dict,
    to_toml,
)
from foundation.data import DatasetError, load_dataset
from foundation.fields import checked_value, knob, read_toml
from foundation.storage import Storage
from jobs import CONFIG_DIR

METRICS = {"center_test_accuracy": "max", "mean_loss": "min", "mean_distance": "min"}
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
# What a run can take over from another run's checkpoint (Coordinator allow_changes):
# the only keys PBT perturbs during a run.
PBT_MUTABLE = ("algorithm.lr", "scoping.gamma0")
# Set per trial by the sweep itself.
MANAGED = ("run.name", "run.storage")
REPORTED = ("round", "center_test_accuracy", "mean_loss", "mean_distance", "gamma")


class SweepError(ConfigError):
    """A bad sweep file or sweep option, said in one line."""


# ---- the sweep file ------------------------------------------------------------------


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
    metric: str = knob("center_test_accuracy", choices=tuple(METRICS))
    """Reported metric the schedulers and the best trial are judged by."""
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
class Distribution:
    """One [sweep.space] entry: kind (grid, choice, uniform, loguniform) and its values."""

    kind: str
    values: tuple[Any, ...]

    def for_tune(self) -> Any:
        from ray import tune

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
    return "/".join([root.rstrip("/"), *parts])


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


def _declared(key: str) -> str:
    section, _, name = key.partition(".")
    cls = type(getattr(Config(), section))
    return next(str(f.type) for f in fields(cls) if f.name == name)


def _unknown_key(key: str, known: list[str], what: str) -> SweepError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return SweepError(f"unknown {what} {key!r}{hint}")


def parse_distribution(key: str, spec: Any, base: Config) -> Distribution:
    """One space entry, checked against the key's type and range (on top of `base`)."""
    where = f'sweep.space."{key}"'
    if key not in config_keys():
        raise _unknown_key(key, config_keys(), "config key in sweep.space")
    if key in MANAGED:
        raise SweepError(f"{where}: {key} is set by the sweep for each trial")
    shape = "{grid = [...]}, {choice = [...]}, {uniform = [a, b]} or {loguniform = [a, b]}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SweepError(f"{where} must be one of {shape}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
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
        values = [low, high]
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


def _fill(obj: Any, table: dict[str, Any], prefix: str) -> None:
    """Set a sweep dataclass from its TOML table: known keys, declared types, ranges."""
    known = {f.name: f for f in fields(obj)}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        if name not in known:
            names = [f"{prefix}.{n}" for n in known]
            raise _unknown_key(key, names, "sweep key")
        f = known[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SweepError(f"{key} must be a table, got {value!r}")
            _fill(current, value, key)
            continue
        try:
            setattr(obj, name, checked_value(key, value, f))
        except SweepError:
            raise
        except ConfigError as err:
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
    run_sets: list[str] = []
    for section, values in table.items():
        if not isinstance(values, dict):
            raise _unknown_key(section, ["base", "sweep", *to_dict(Config())], "sweep file key")
        run_sets += [f"{section}.{key}={raw(value)}" for key, value in values.items()]
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise SweepError(f"--set expects key=value, got {item!r}")
        if key.strip().startswith("sweep."):
            _set_in(sweep_table, key.strip().removeprefix("sweep."), parse_value(text.strip()))
        else:
            run_sets.append(item)
    if base_name is not None and not isinstance(base_name, str):
        raise SweepError(f"base must be the path of a run config, got {base_name!r}")
    base = load_config(_base_path(base_name, path) if base_name else None, run_sets)
    space_table = sweep_table.pop("space", None)
    sweep = SweepConfig()
    _fill(sweep, sweep_table, "sweep")
    space = parse_space(space_table, base)
    result = Sweep(sweep=sweep, base=base, space=space, source=str(path))
    if sweep.scheduler == "pbt" and not result.mutable:
        raise SweepError(
            f"sweep.scheduler = pbt perturbs {' or '.join(PBT_MUTABLE)} during a run: "
            "put at least one of them in sweep.space"
        )
    return result


# ---- resources -------------------------------------------------------------------------


def with_gpus(sweep: Sweep, cluster: dict[str, float]) -> Sweep:
    """Apply sweep.gpus_per_replica: y GPUs per trial on a GPU cluster unless told otherwise."""
    setting, y = sweep.sweep.gpus_per_replica, sweep.base.algorithm.replicas
    gpus = cluster.get("GPU", 0.0)
    if setting == "auto":
        if sweep.base.resources.gpus_per_replica or not gpus:
            return sweep
        setting = min(1.0, math.floor(gpus / y * 100) / 100) or 0.0
    base = build_config({**flat(sweep.base), "resources.gpus_per_replica": float(setting)})
    return dataclasses.replace(sweep, base=base)


def trial_bundles(sweep: Sweep, cluster: dict[str, float]) -> list[dict[str, float]]:
    """[coordinator, replica unit × units]: one placement group holds a whole trial."""
    head = {"CPU": sweep.sweep.coordinator_cpus}
    if sweep.sweep.replicas == "inprocess":
        return [head]
    return [head, *unit_bundles(sweep.base, cluster)]


def held_out(sweep: Sweep) -> str:
    fraction = sweep.base.data.validation
    return f" on the held-out {fraction:g} of the training set" if fraction else ""


def describe(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def trials_that_fit(bundles: list[dict[str, float]], cluster: dict[str, float]) -> int:
    need: dict[str, float] = {}
    for bundle in bundles:
        for kind, amount in bundle.items():
            need[kind] = need.get(kind, 0.0) + amount
    return min(
        math.floor(cluster.get(kind, 0.0) / amount + 1e-9)
        for kind, amount in need.items()
        if amount > 0
    )


def concurrency(sweep: Sweep, bundles: list[dict[str, float]], cluster: dict[str, float]) -> int:
    fit = trials_that_fit(bundles, cluster)
    asked = sweep.sweep.max_concurrent_trials  # more than fit asks an autoscaler to grow
    need = ", ".join(f"{k} {sum(b.get(k, 0) for b in bundles):g}" for k in ("CPU", "GPU"))
    have = ", ".join(f"{k} {cluster.get(k, 0):g}" for k in ("CPU", "GPU"))
    if fit < 1 and not asked:
        raise ResourceError(
            f"one trial needs {need}; the cluster has {have} (lower resources.cpus_per_replica "
            "or sweep.coordinator_cpus, or set sweep.max_concurrent_trials on an autoscaling one)"
        )
    if fit < 1:
        print(f"wv: one trial needs {need}, the cluster has {have}: trials wait for more nodes")
    return asked or fit


# ---- one trial ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What every trial needs; shipped once to the trials through tune.with_parameters."""

    base: dict[str, Any]
    space: dict[str, Distribution]
    runs: str
    sweep_name: str
    pbt: bool
    allow_changes: tuple[str, ...]
    inprocess: bool
    env: dict[str, str] = field(default_factory=dict)
    """W&B settings decided by the driver (tracking.environment)."""


def trial_config(plan: Plan, params: dict[str, Any], trial_id: str | None) -> Config:
    values = {**plan.base, **{k: plan.space[k].clip(params[k]) for k in plan.space if k in params}}
    if trial_id is not None:
        values |= {"run.storage": plan.runs, "run.name": trial_id}
    return build_config(values)


def export_checkpoint(run: RunDir, round_: int, trial_id: str, dest: Path) -> None:
    """Copy one run checkpoint (and the metrics it covers) into a Tune checkpoint folder."""
    folder = run_checkpoint.folder_name(round_)
    source = run.storage.child(run_checkpoint.FOLDER, folder)
    target = dest / run_checkpoint.FOLDER / folder
    target.mkdir(parents=True)
    for name in ("state.pt", "manifest.json"):
        (target / name).write_bytes(source.read_bytes(name))
    if run.exists("metrics.parquet"):
        (dest / "metrics.parquet").write_bytes(run.read_bytes("metrics.parquet"))
    (dest / "wv.json").write_text(
        json.dumps({"trial_id": trial_id, "round": round_, "folder": folder})
    )


def import_checkpoint(checkpoint: Any, run: RunDir, trial_id: str) -> dict[str, Any] | None:
    """Put a Tune checkpoint's run checkpoint into this trial's run directory.

    Returns its wv.json when it came from another trial (a PBT exploit). The trial's own
    checkpoint is copied back only when its run directory lacks it (a new node)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        source = Path(folder)
        meta: dict[str, Any] = json.loads((source / "wv.json").read_text())
        own = meta["trial_id"] == trial_id
        if own and meta["round"] <= max(run_checkpoint.rounds(run), default=-1):
            return None
        exploits = [e for e in run.events() if e["event"] == "pbt_exploit"]
        run.clear()
        for e in exploits:  # this trial's lineage survives taking over another run
            run.event("pbt_exploit", donor=e["donor"], round=e["round"])
        target = run.storage.child(run_checkpoint.FOLDER, meta["folder"])
        target.mkdir()
        # The manifest last: a checkpoint without one does not exist (coordinator/checkpoint.py).
        for name in ("state.pt", "manifest.json"):
            data = (source / run_checkpoint.FOLDER / meta["folder"] / name).read_bytes()
            target.write_bytes(name, data)
        if (source / "metrics.parquet").exists():
            run.write_bytes("metrics.parquet", (source / "metrics.parquet").read_bytes())
    if own:
        return None
    run.event("pbt_exploit", donor=meta["trial_id"], round=meta["round"])
    return meta


def replica_group(plan: Plan) -> GroupFactory:
    """The trial's replicas: in its own placement group's bundles 1.. (or in-process)."""
    if plan.inprocess:
        return LocalGroup
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is None:  # not started by Tune with a placement group: reserve one itself
        return RayReplicaGroup
    return functools.partial(RayReplicaGroup, placement=(pg, 1))


def run_trial(params: dict[str, Any], plan: Plan) -> None:
    """The Tune trainable: one Wide Valley run, one Tune result per evaluation round."""
    from ray import tune

    from foundation import tracking

    os.environ.update(plan.env)
    trial_id = tune.get_context().get_trial_id() or "trial"
    config = trial_config(plan, params, trial_id)
    run = RunDir(config.run.storage, config.run.name)
    donor = import_checkpoint(tune.get_checkpoint(), run, trial_id)
    coordinator = Coordinator(config, replica_group(plan), allow_changes=plan.allow_changes)
    run = coordinator.run  # the one that holds the events from here on
    if donor is not None:  # the config this run goes on with (the checkpoint keeps the donor's)
        run.write_text("config.toml", to_toml(config))
    extra = {"sweep": plan.sweep_name, "trial_id": trial_id}
    tracker = tracking.start(config, run.path, group=plan.sweep_name, name=trial_id, extra=extra)
    restored = lineage(run)
    try:
        while not coordinator.done:
            progress = coordinator.step()
            tracker.log(progress)
            if "center_test_accuracy" not in progress or coordinator.done:
                continue  # the last round is reported below, with the run's summary
            metrics = {k: progress[k] for k in REPORTED} | restored
            if plan.pbt or progress.get("checkpoint"):
                if not progress.get("checkpoint"):  # PBT may copy any report's state
                    coordinator.checkpoint()
                with tempfile.TemporaryDirectory(prefix="wv-tune-") as folder:
                    export_checkpoint(run, coordinator.round, trial_id, Path(folder))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)
        # Also when the run had ended before a pause: Tune then still waits for its end.
        summary = coordinator.finish()
        tracker.finish(summary)
        # done: the trial ends here, whatever its scheduler would say (PBT could pause it,
        # and it would come back only to report the same end again).
        tune.report(final_metrics(coordinator, summary) | restored | {"done": True})
    finally:
        tracker.finish()
        coordinator.shutdown()


def lineage(run: RunDir) -> dict[str, Any]:
    """PBT exploits of this trial so far: how many, and the last donor and round."""
    exploits = [e for e in run.events() if e["event"] == "pbt_exploit"]
    last = exploits[-1] if exploits else {"donor": "", "round": -1}
    return {
        "exploits": len(exploits),
        "restored_from": last["donor"],
        "restored_round": last["round"],
    }


def final_metrics(coordinator: Coordinator, summary: dict[str, Any]) -> dict[str, Any]:
    """The reported metrics at the end of a run, from its summary and last round's rows."""
    last = coordinator.round - 1
    losses = [r["train_loss"] for r in coordinator.rows if r["round"] == last and r["train_loss"]]
    return {
        "round": summary["rounds"],
        "center_test_accuracy": summary["center_test_accuracy"],
        "mean_loss": sum(losses) / len(losses) if losses else math.nan,
        "mean_distance": summary["mean_distance_to_center"],
        "gamma": summary["final_gamma"],
        "ensemble_test_accuracy": summary["ensemble_test_accuracy"],
    }


# ---- the sweep -----------------------------------------------------------------------------


def make_scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s, rounds = sweep.sweep, sweep.base.train.rounds
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="round",
            max_t=rounds,
            grace_period=min(s.asha.grace_period, rounds),
            reduction_factor=s.asha.reduction_factor,
        )
    if s.scheduler == "pbt":
        space = sweep.space

        def clip(config: dict[str, Any]) -> dict[str, Any]:
            return {k: space[k].clip(v) if k in space else v for k, v in config.items()}

        return PopulationBasedTraining(
            time_attr="round",
            perturbation_interval=s.pbt.perturbation_interval,
            hyperparam_mutations={k: space[k].for_pbt() for k in sweep.mutable},
            quantile_fraction=s.pbt.quantile_fraction,
            resample_probability=s.pbt.resample_probability,
            custom_explore_fn=clip,
            synch=s.pbt.synch,
        )
    return FIFOScheduler()


def fingerprint(sweep: Sweep) -> dict[str, Any]:
    """What makes two sweeps the same sweep (a restored one must match it)."""
    options = dataclasses.asdict(sweep.sweep)
    options.pop("max_concurrent_trials")
    space = {k: [d.kind, list(d.values)] for k, d in sweep.space.items()}
    return {"sweep": options, "space": space, "base": flat(sweep.base)}


def check_same_sweep(sweep: Sweep) -> None:
    store = Storage(sweep.uri)
    if not store.exists("sweep.json"):
        return
    saved = json.loads(store.read_bytes("sweep.json"))
    now = json.loads(json.dumps(fingerprint(sweep)))
    for part in ("sweep", "space", "base"):
        for key in sorted(set(saved[part]) | set(now[part])):
            if saved[part].get(key) != now[part].get(key):
                name = key if part == "base" else f"{part}.{key}".replace("space.", "sweep.space.")
                raise ResumeMismatch(
                    f"{sweep.uri} holds a sweep with {name} = {saved[part].get(key)!r}, not "
                    f"{now[part].get(key)!r}: use --fresh to start over, or another sweep.name"
                )


def keep_checkpoints(sweep: Sweep) -> int:
    """Tune checkpoints kept per trial: PBT may copy one from its last perturbation, up to
    perturbation_interval rounds back; the other schedulers only resume from the newest."""
    if sweep.sweep.scheduler != "pbt":
        return 2
    reports = math.ceil(sweep.sweep.pbt.perturbation_interval / sweep.base.train.eval_every)
    return 2 * reports + 2


def make_tuner(sweep: Sweep, bundles: list[dict[str, float]], at_once: int, fresh: bool) -> Any:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from foundation import tracking

    s = sweep.sweep
    plan = Plan(
        base=flat(sweep.base),
        space=sweep.space,
        runs=join(sweep.base.run.storage, s.name, "runs"),
        sweep_name=s.name,
        pbt=s.scheduler == "pbt",
        allow_changes=sweep.mutable if s.scheduler == "pbt" else (),
        inprocess=s.replicas == "inprocess",
        env=tracking.environment() if sweep.base.logging.wandb else {},
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan), tune.PlacementGroupFactory(bundles)
    )
    param_space = {key: d.for_tune() for key, d in sweep.space.items()}
    experiment = join(sweep.uri, "tune")
    if not fresh and tune.Tuner.can_restore(experiment):
        check_same_sweep(sweep)
        print(f"wv: resuming the sweep in {experiment}", flush=True)
        return tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True,
            param_space=param_space,
        )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.direction,
            scheduler=make_scheduler(sweep),
            # The variant generator takes the limit itself (TuneConfig's would be ignored).
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=at_once),
            num_samples=s.num_samples,
            reuse_actors=False,  # a trial's replicas die with its actor, never outlive it
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=sweep.uri,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints(sweep)),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            verbose=1,
        ),
    )


def trial_rows(sweep: Sweep, results: Any) -> list[dict[str, Any]]:
    """One row per trial: its (final) parameters and its last reported metrics."""
    rows = []
    for result in results:
        m, config = result.metrics or {}, result.config or {}
        reached = m.get("round")
        status = "error" if result.error else "finished"
        if status == "finished" and (reached or 0) < sweep.base.train.rounds:
            status = "stopped early"
        row: dict[str, Any] = {"trial": m.get("trial_id") or Path(result.path).name}
        row |= {key: plain(sweep.space[key].clip(config.get(key))) for key in sweep.space}
        row |= {"status": status, "reports": m.get("training_iteration")}
        row |= {key: m.get(key) for key in REPORTED}
        row |= {"ensemble_test_accuracy": m.get("ensemble_test_accuracy")}
        row |= {key: m.get(key) for key in ("exploits", "restored_from", "restored_round")}
        row["restored_from"] = row["restored_from"] or None
        row |= {
            "run_dir": join(sweep.base.run.storage, sweep.sweep.name, "runs", str(row["trial"]))
        }
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    for key in sweep.space:  # one Parquet type per column: text where the values mix
        if len({type(r[key]) for r in rows}) > 1:
            for r in rows:
                r[key] = raw(r[key])
    return rows


def plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def best_row(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    metric = sweep.sweep.metric
    scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if sweep.sweep.direction == "max" else -1
    return max(scored, key=lambda r: sign * r[metric])


def best_toml(sweep: Sweep, row: dict[str, Any]) -> str:
    """The best trial's config, ready for jobs.train (a new run name, the base storage)."""
    values = {**flat(sweep.base), **{k: row[k] for k in sweep.space}}
    values["run.name"] = f"{sweep.sweep.name}-best"
    values["data.validation"] = 0.0
    config = build_config(values)
    metric = sweep.sweep.metric
    header = [
        f"# Best trial of sweep {sweep.sweep.name!r} ({sweep.source}): {row['trial']},",
        f"# {metric} = {row[metric]:.4f} at round {row['round']}; its run: {row['run_dir']}",
    ]
    if sweep.base.data.validation:
        header.append(
            f"# Chosen on the held-out {sweep.base.data.validation:g} of the training set "
            "(data.validation); this run trains on all of it and reports the test set."
        )
    if sweep.sweep.scheduler == "pbt":
        header.append("# PBT changed its η / γ0 during the run: these are its final values.")
    header.append("# python -m jobs.train --config <this file>")
    return "\n".join(header) + "\n" + to_toml(config)


def table_text(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = [*sweep.space, "status", "round", "center_test_accuracy", "mean_loss", "mean_distance"]
    acc = "center val acc" if sweep.base.data.validation else "center acc"
    heads = {"center_test_accuracy": acc, "mean_loss": "loss", "mean_distance": "dist"}

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [["trial", *(heads.get(k, k) for k in keys)]]
    table += [[str(r["trial"]), *(cell(r.get(k)) for k in keys)] for r in rows]
    if any(r.get("restored_from") for r in rows):
        table[0].append("restored from")
        for line, r in zip(table[1:], rows, strict=True):
            line.append(cell(r.get("restored_from")))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)  # fmt: skip


def gamma0_of(sweep: Sweep, row: dict[str, Any]) -> float:
    """γ0 of a trial: its value, or (for "auto") what its first round measured."""
    value = row.get("scoping.gamma0", sweep.base.scoping.gamma0)
    if isinstance(value, str) and value != "auto":
        value = parse_value(value)  # a column of mixed values is text
    if isinstance(value, (int, float)):
        return float(value)
    try:
        rows = RunDir(*row["run_dir"].rsplit("/", 1)).read_table("metrics.parquet")
    except OSError:
        return math.nan
    first = [r["gamma"] for r in rows if r["round"] == 0]
    return float(first[0]) if first else math.nan


def sweep_plot(sweep: Sweep, rows: list[dict[str, Any]]) -> bytes:
    """The metric against γ0 (left) and η (right), one colour per scoping schedule."""
    from foundation.plots import plt  # matplotlib with the Agg backend

    metric = sweep.sweep.metric
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    base = sweep.base

    def kind_of(row: dict[str, Any]) -> str:
        return str(row.get("scoping.kind", base.scoping.kind))

    for i, kind in enumerate(sorted({kind_of(r) for r in rows})):
        color = f"C{i}"
        mine = [r for r in rows if kind_of(r) == kind and isinstance(r.get(metric), (int, float))]
        etas = [float(r.get("algorithm.lr", base.algorithm.lr)) for r in mine]
        for ax, xs in ((axes[0], [gamma0_of(sweep, r) for r in mine]), (axes[1], etas)):
            ended = [r["status"] == "finished" for r in mine]
            for done, marker in ((True, "o"), (False, "x")):
                pts = [(x, r[metric]) for x, r, e in zip(xs, mine, ended, strict=True) if e == done]
                if pts:
                    label = kind + ("" if done else " (stopped early or failed)")
                    ax.scatter(*zip(*pts, strict=True), marker=marker, c=color, label=label, s=40)
    what = f"{metric} (validation split)" if base.data.validation else metric
    axes[0].set(xlabel="γ0 (scoping.gamma0)", ylabel=what, title=f"{metric} by γ0 and schedule")
    axes[1].set(xlabel="η (algorithm.lr, final value)", ylabel=what, title=f"{metric} by η")
    for ax in axes:
        xs = [p[0] for c in ax.collections for p in c.get_offsets()]
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.collections:
            ax.legend(fontsize=8, title="scoping.kind", title_fontsize=8)
    fig.suptitle(f"sweep {sweep.sweep.name}: {len(rows)} trials, {sweep.sweep.scheduler}")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def write_outputs(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Storage(sweep.uri)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    store.write_bytes("trials.parquet", sink.getvalue().to_pybytes())
    store.mkdir("plots")
    store.write_bytes("plots/sweep.png", sweep_plot(sweep, rows))
    best = best_row(sweep, rows)
    if best is not None:
        store.write_bytes("best.toml", best_toml(sweep, best).encode())
    return best


def check_inputs(sweep: Sweep, fresh: bool) -> None:
    """What can be checked before anything starts: storage, data set, batch size."""
    store = Storage(sweep.uri)
    store.check_writable()
    if fresh:
        for name in ("tune", "runs", "plots"):
            store.delete_dir(name)
    data = load_dataset(sweep.base.data.dataset, sweep.base.data.root)
    check_batch_size(sweep.base, len(data.train.y))


def run(sweep: Sweep, fresh: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Run the sweep on the connected (or a new local) Ray; returns the rows and the best."""
    # Trials see paths as jobs.train's actors do: relative to the job's working directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    where = connect()
    cluster = ray.cluster_resources()
    sweep = with_gpus(sweep, cluster)
    bundles = trial_bundles(sweep, cluster)
    at_once = concurrency(sweep, bundles, cluster)
    s = sweep.sweep
    space = ", ".join(f"{k} {d.describe()}" for k, d in sweep.space.items())
    units = f" + {len(bundles) - 1} × {describe(bundles[-1])} for replicas" * (len(bundles) > 1)
    print(
        f"wv: sweep {s.name}: {s.scheduler}, {s.num_samples} sample(s) of {space}; "
        f"{s.direction} {s.metric}{held_out(sweep)}; each trial reserves "
        f"{describe(bundles[0])} for its coordinator{units or ' and in-process replicas'}, "
        f"{at_once} trial(s) at once, "
        f"on {where}",
        flush=True,
    )
    started = time.time()
    tuner = make_tuner(sweep, bundles, at_once, fresh)
    Storage(sweep.uri).write_bytes("sweep.json", json.dumps(fingerprint(sweep), indent=1).encode())
    results = tuner.fit()
    rows = trial_rows(sweep, results)
    best = write_outputs(sweep, rows)
    print(table_text(sweep, rows))
    print(f"{len(rows)} trials in {time.time() - started:.1f} s · sweep directory {sweep.uri}")
    if best is not None:
        print(
            f"best: {best['trial']} with {s.metric} {best[s.metric]:.4f} → "
            f"python -m jobs.train --config {join(sweep.uri, 'best.toml')}"
        )
    return rows, best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="sweep file (TOML with a [sweep] table)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a run key (algorithm.replicas=2) or a sweep key (sweep.num_samples=8, "
             "sweep.space.algorithm.lr={grid=[0.05,0.1]}); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true",
        help="start over: delete this sweep's trials and results instead of resuming it",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.overrides)
        check_inputs(sweep, args.fresh)
        rows, _ = run(sweep, fresh=args.fresh)
    except (ConfigError, DatasetError, ResourceError, ResumeMismatch, OSError) as err:
        print(f"wv: error: {err}", file=sys.stderr)
        return 2
    except ray.exceptions.RayError as err:
        print(f"wv: error: {one_line(err)}", file=sys.stderr)
        return 1
    errors = [r["trial"] for r in rows if r["status"] == "error"]
    if errors:
        print(f"wv: error: {len(errors)} trial(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
