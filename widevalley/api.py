"""fit(): train coupled replicas of your model, on your data, with your loss.

    import widevalley
    result = widevalley.fit("run.toml", model=GRUNet, model_kwargs={"hidden": 64},
                            data=load_sequences, loss=None, overrides=["algorithm.kind=parle"])
    result.summary["center_test_accuracy"], result.model(), result.run_dir

Where it runs:
- local=True: everything in this process, replicas one after another (no Ray): for
  debugging and tests.
- inside a Ray Tune trial: the Coordinator in the trial's process, the replicas as Ray
  actors (in the trial's placement group when Tune reserved one), each evaluation
  reported through Tune (widevalley/tuning.py), so a Tuner's scheduler drives the run.
- otherwise: on the Ray cluster in RAY_ADDRESS, a cluster `ray start` left running on
  this machine, or a private local Ray, exactly as `python -m jobs.train` (the
  Coordinator as an actor on a cluster, in this process on the private Ray; progress
  lines; SIGTERM stops with a checkpoint).
Every error it raises is a WideValleyError (widevalley/__init__.py lists the kinds).
The model, data and loss are checked once before any replica starts (one line naming
the key, ConfigError).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from cluster import driver
from cluster.collective import replica_group_class
from cluster.validate import check_parts, on_remote_cluster
from coordinator.coordinator import Coordinator, GroupFactory
from coordinator.groups import LocalGroup, layout
from coordinator.loop import drive
from coordinator.rundir import RunDir
from foundation.config import Config, to_toml
from foundation.errors import WideValleyError
from foundation.parts import Parts
from widevalley.arguments import ConfigLike, DataLike, as_config, prepare
from widevalley.result import Result
from widevalley.tuning import TrialReporter, current_trial


def fit(
    config: ConfigLike = None,
    *,
    overrides: Sequence[str] = (),
    model: Callable[..., nn.Module] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    data: DataLike | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    loss: Callable[..., Any] | str | None = None,
    metric: Callable[..., Any] | str | None = None,
    fresh: bool = False,
    local: bool = False,
    verbose: bool = True,
    tune_checkpoint_every_report: bool = False,
    allow_changes: tuple[str, ...] = (),
    wandb_group: str | None = None,
) -> Result:
    """Train one run and return its Result (the run directory holds the same).

    config: a Config, the path of a run TOML, or None for the defaults; `overrides` are
        `--set` items ("algorithm.replicas=8").
    model: an nn.Module class or a factory returning one, called with `model_kwargs`
        (plain TOML values), plus input_shape / num_classes when it takes them.
    data: (train, test), each an (inputs, targets) pair of tensors or a map-style torch
        Dataset; or a callable returning that, called with `data_kwargs` (and root)
        where the replicas run, so large data never passes through this process.
    loss: (outputs, targets) -> scalar batch mean, or "cross_entropy" / "mse"
        (default: the config's train.loss, cross entropy).
    metric: (outputs, targets) -> batch mean, higher is better, or "accuracy" / "none"
        (default: accuracy with cross entropy, else none: the loss is reported).
    fresh: start over instead of resuming the run directory's checkpoint.
    tune_checkpoint_every_report: inside Tune, attach the run's checkpoint to every
        report (Population Based Training needs it; other schedulers do not).
    allow_changes: config keys a resumed run may change (those PBT perturbs).
    wandb_group: the W&B group of the run (logging.wandb); inside Tune by default the
        experiment's name.

    Every error it raises is a WideValleyError: bad input as its kind (ConfigError,
    DatasetError, ResourceError, ResumeMismatch, LeaseHeld, …), a run that failed as
    CoordinatorError (the original as its `cause`, and an instance of the original's
    class where Python can combine them) or as its own kind (RunFailed, CapacityError, …).
    """
    try:
        return _fit(config, overrides, model, model_kwargs, data, data_kwargs, loss, metric,
                    fresh, local, verbose, tune_checkpoint_every_report, allow_changes,
                    wandb_group)  # fmt: skip
    except WideValleyError:
        raise
    except Exception as err:  # one root for every failure: WideValleyError, cause kept
        raise driver.coordinator_error(err) from err


def _fit(
    config: ConfigLike, overrides: Sequence[str], model: Callable[..., nn.Module] | None,
    model_kwargs: Mapping[str, Any] | None, data: DataLike | None,
    data_kwargs: Mapping[str, Any] | None, loss: Callable[..., Any] | str | None,
    metric: Callable[..., Any] | str | None, fresh: bool, local: bool, verbose: bool,
    tune_checkpoint_every_report: bool, allow_changes: tuple[str, ...], wandb_group: str | None,
) -> Result:  # fmt: skip
    run_config, parts = prepare(
        as_config(config, overrides), model=model, model_kwargs=model_kwargs, data=data,
        data_kwargs=data_kwargs, loss=loss, metric=metric,
    )  # fmt: skip
    say: Callable[[str], None] = (lambda line: print(line, flush=True)) if verbose else _quiet
    trial = current_trial()
    if local or trial is not None:
        check_parts(run_config, parts, remote=False)
        factory, where = (LocalGroup, "in this process") if local else _trial_group(run_config)
        say(f"wv: {run_config.algorithm.kind} with {run_config.algorithm.replicas} replicas "
            f"of {run_config.model.arch}, {run_config.train.rounds} rounds, {where}")  # fmt: skip
        group: GroupFactory = functools.partial(factory, parts=parts)
        reporter = TrialReporter(trial, tune_checkpoint_every_report) if trial else None
        wandb_group = wandb_group or (reporter.experiment() if reporter else None)
        _run_here(run_config, parts, group, fresh, allow_changes, reporter, say, wandb_group)
    else:
        if not on_remote_cluster():
            check_parts(run_config, parts, remote=False)
        driver.run(run_config, fresh=fresh, say=say, parts=parts)
    return Result.read(run_config, parts)


def _quiet(line: str) -> None:
    pass


def _trial_group(config: Config) -> tuple[Callable[..., Any], str]:
    """Where a trial's replicas run, and how the first line says it.

    The trial's placement group is what the user reserved for it, and bundle 0 is the
    trial's own process. When it has a bundle for every replica unit after that (what
    `widevalley sweep` reserves), the replicas are actors in those bundles. When it has
    none (`tune.with_resources(fn, {"cpu": 1})`, or no request at all: one bundle), they
    run in the trial's process, inside the reservation: a placement group of their own
    would wait forever on a cluster whose CPUs the trials already hold. Outside any
    placement group they get one of their own."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    cls = replica_group_class(config)
    if pg is None:
        return cls, "as Ray actors in a placement group of their own"
    bundles = pg.bundle_specs
    if len(bundles) > len(layout(config)):
        return functools.partial(cls, placement=(pg, 1)), "as Ray actors in the trial's bundles"
    reserved = ", ".join(f"{k}={v:g}" for b in bundles for k, v in sorted(b.items()))
    return LocalGroup, (
        f"in the trial's process (its reservation, {reserved}, has no bundle for the replicas)"
    )


def _run_here(
    config: Config, parts: Parts | None, group: GroupFactory, fresh: bool,
    allow_changes: tuple[str, ...], reporter: TrialReporter | None, say: Callable[[str], None],
    wandb_group: str | None,
) -> None:  # fmt: skip
    """The Coordinator in this process, stepped to the end (reporting to Tune if asked)."""
    from foundation import tracking  # wandb is imported only when logging.wandb is on

    run = RunDir(config.run.storage, config.run.name)
    donor = reporter.adopt(run) if reporter is not None else None
    coordinator = Coordinator(config, group, fresh=fresh, allow_changes=allow_changes, parts=parts)
    if donor is not None:  # the config this run goes on with (the checkpoint keeps the donor's)
        coordinator.run.write_text("config.toml", to_toml(config))
    tracker = tracking.start(config, coordinator.run.path, group=wandb_group)

    def on_progress(progress: dict[str, Any]) -> None:
        if reporter is not None:
            reporter.progress(coordinator, progress)

    try:
        summary = drive(coordinator, coordinator.round, config.train.rounds, say=say,
                        tracker=tracker, on_progress=on_progress)  # fmt: skip
        tracker.finish(summary)
        if reporter is not None:
            reporter.final(coordinator, summary)
    finally:
        tracker.finish()
        coordinator.shutdown()
