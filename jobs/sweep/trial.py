"""One trial: the Tune trainable that runs one ordinary Wide Valley run and reports each
evaluation round, and the copying of run checkpoints in and out of Tune's checkpoints
that lets PBT hand one trial's run to another.

This module must stay importable (never `__main__`): Ray pickles run_trial by
reference, and every trial process imports it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.actors import RayReplicaGroup
from coordinator import checkpoint as run_checkpoint
from coordinator.coordinator import Coordinator, GroupFactory
from coordinator.groups import LocalGroup
from coordinator.rundir import RunDir
from foundation.config import Config, to_toml
from jobs.sweep.space import Distribution, build_config

# Each report's metrics: "round" is the schedulers' time_attr, the rest what they judge by.
REPORTED = ("round", "center_test_accuracy", "mean_loss", "mean_distance", "gamma")


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


# ---- PBT: run checkpoints through Tune's checkpoints --------------------------------------


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
        _replace_run(run, source, meta["folder"])
    if own:
        return None
    run.event("pbt_exploit", donor=meta["trial_id"], round=meta["round"])
    return meta


def _replace_run(run: RunDir, source: Path, folder: str) -> None:
    """Empty the run directory and put the checkpoint `folder` of `source` into it."""
    exploits = [e for e in run.events() if e["event"] == "pbt_exploit"]
    run.clear()
    for e in exploits:  # this trial's lineage survives taking over another run
        run.event("pbt_exploit", donor=e["donor"], round=e["round"])
    target = run.storage.child(run_checkpoint.FOLDER, folder)
    target.mkdir()
    # The manifest last: a checkpoint without one does not exist (coordinator/checkpoint.py).
    for name in ("state.pt", "manifest.json"):
        target.write_bytes(name, (source / run_checkpoint.FOLDER / folder / name).read_bytes())
    if (source / "metrics.parquet").exists():
        run.write_bytes("metrics.parquet", (source / "metrics.parquet").read_bytes())


def lineage(run: RunDir) -> dict[str, Any]:
    """PBT exploits of this trial so far: how many, and the last donor and round."""
    exploits = [e for e in run.events() if e["event"] == "pbt_exploit"]
    last = exploits[-1] if exploits else {"donor": "", "round": -1}
    return {
        "exploits": len(exploits),
        "restored_from": last["donor"],
        "restored_round": last["round"],
    }


# ---- the trainable --------------------------------------------------------------------------


def replica_group(plan: Plan) -> GroupFactory:
    """The trial's replicas: in its own placement group's bundles 1.. (or in-process)."""
    if plan.inprocess:
        return LocalGroup
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is None:  # not started by Tune with a placement group: reserve one itself
        return RayReplicaGroup
    return functools.partial(RayReplicaGroup, placement=(pg, 1))


def start_coordinator(plan: Plan, params: dict[str, Any], trial_id: str) -> Coordinator:
    """The trial's Coordinator, on the checkpoint Tune hands it (its own, or a donor's)."""
    from ray import tune

    config = trial_config(plan, params, trial_id)
    run = RunDir(config.run.storage, config.run.name)
    donor = import_checkpoint(tune.get_checkpoint(), run, trial_id)
    coordinator = Coordinator(config, replica_group(plan), allow_changes=plan.allow_changes)
    if donor is not None:  # the config this run goes on with (the checkpoint keeps the donor's)
        coordinator.run.write_text("config.toml", to_toml(config))
    return coordinator


def report_round(
    plan: Plan, coordinator: Coordinator, trial_id: str, metrics: dict[str, Any], checkpointed: bool
) -> None:
    """One evaluation round to Tune, with the run checkpoint when PBT may copy it or the
    run just saved one (a restarted trial resumes from it, on any node)."""
    from ray import tune

    if not (plan.pbt or checkpointed):
        tune.report(metrics)
        return
    if not checkpointed:  # PBT may copy any report's state
        coordinator.checkpoint()
    with tempfile.TemporaryDirectory(prefix="wv-tune-") as folder:
        export_checkpoint(coordinator.run, coordinator.round, trial_id, Path(folder))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(params: dict[str, Any], plan: Plan) -> None:
    """The Tune trainable: one Wide Valley run, one Tune result per evaluation round."""
    from ray import tune

    from foundation import tracking

    os.environ.update(plan.env)
    trial_id = tune.get_context().get_trial_id() or "trial"
    coordinator = start_coordinator(plan, params, trial_id)
    run = coordinator.run  # the one that holds the events from here on
    extra = {"sweep": plan.sweep_name, "trial_id": trial_id}
    tracker = tracking.start(
        coordinator.config, run.path, group=plan.sweep_name, name=trial_id, extra=extra
    )
    restored = lineage(run)
    try:
        while not coordinator.done:
            progress = coordinator.step()
            tracker.log(progress)
            if "center_test_accuracy" not in progress or coordinator.done:
                continue  # the last round is reported below, with the run's summary
            metrics = {k: progress[k] for k in REPORTED} | restored
            report_round(plan, coordinator, trial_id, metrics, bool(progress.get("checkpoint")))
        # Also when the run had ended before a pause: Tune then still waits for its end.
        summary = coordinator.finish()
        tracker.finish(summary)
        # done: the trial ends here, whatever its scheduler would say (PBT could pause it,
        # and it would come back only to report the same end again).
        tune.report(final_metrics(coordinator, summary) | restored | {"done": True})
    finally:
        tracker.finish()
        coordinator.shutdown()


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
