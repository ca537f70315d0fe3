"""A run inside a Ray Tune trial: each evaluation reported through Tune, so any Tuner and
scheduler (ASHA, PBT, …) can drive and stop a Wide Valley run.

fit() called from a Tune trainable notices the trial and reports, at every evaluation
round, `round` (the time attribute), the headline number and the other progress numbers.
A report carries the run's checkpoint when the run just wrote one, or at every report
when asked (`tune_checkpoint_every_report`, what Population Based Training needs to copy
one trial's run into another); a trial restarted from a Tune checkpoint — its own, or a
donor's under PBT — resumes the run from it. The run's last report has `done: True`.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from coordinator import checkpoint as run_checkpoint
from coordinator.coordinator import Coordinator
from coordinator.rundir import METRICS, RunDir

REPORTED = ("round", "mean_loss", "mean_distance", "gamma")
"""Reported at every evaluation, beside the headline number and the center's number of
the same kind (the same key unless the run is uncoupled: sgd, esgd)."""


def current_trial() -> str | None:
    """The id of the Tune trial this process runs, or None outside Tune."""
    if "ray.tune" not in sys.modules:  # a trial has imported Tune already; don't pay for it
        return None
    from ray import tune

    with warnings.catch_warnings():  # outside a trial Tune warns before it returns None
        warnings.simplefilter("ignore")
        trial_id: str | None = tune.get_context().get_trial_id()
    return trial_id


# ---- run checkpoints through Tune's checkpoints ---------------------------------------


def export_checkpoint(run: RunDir, round_: int, trial_id: str, dest: Path) -> None:
    """Copy one run checkpoint (and the metrics it covers) into a Tune checkpoint folder."""
    folder = run_checkpoint.folder_name(round_)
    source = run.storage.child(run_checkpoint.FOLDER, folder)
    target = dest / run_checkpoint.FOLDER / folder
    target.mkdir(parents=True)
    for name in ("state.pt", "manifest.json"):
        (target / name).write_bytes(source.read_bytes(name))
    if run.exists(METRICS):
        (dest / METRICS).write_bytes(run.read_bytes(METRICS))
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
    if (source / METRICS).exists():
        run.write_bytes(METRICS, (source / METRICS).read_bytes())


def lineage(run: RunDir) -> dict[str, Any]:
    """PBT exploits of this trial so far: how many, and the last donor and round."""
    exploits = [e for e in run.events() if e["event"] == "pbt_exploit"]
    last = exploits[-1] if exploits else {"donor": "", "round": -1}
    return {
        "exploits": len(exploits),
        "restored_from": last["donor"],
        "restored_round": last["round"],
    }


# ---- reporting --------------------------------------------------------------------------


class TrialReporter:
    def __init__(self, trial_id: str, every_report: bool) -> None:
        self.trial_id, self.every_report = trial_id, every_report
        self.restored: dict[str, Any] = {}

    def experiment(self) -> str | None:
        """The Tune experiment's name (the W&B group of its trials' runs)."""
        from ray import tune

        name: str | None = tune.get_context().get_experiment_name()
        return name

    def adopt(self, run: RunDir) -> dict[str, Any] | None:
        """Before the Coordinator opens the run: the checkpoint Tune hands this trial
        (its own after a restart, or a donor's under PBT). Returns the donor's wv.json."""
        from ray import tune

        return import_checkpoint(tune.get_checkpoint(), run, self.trial_id)

    def progress(self, coordinator: Coordinator, progress: dict[str, Any]) -> None:
        """One evaluation round (not the last: that one is final()'s) to Tune."""
        from ray import tune

        if "headline" not in progress or coordinator.done:
            return
        if not self.restored:
            self.restored = lineage(coordinator.run)
        name = progress["headline"]
        center = f"center_test_{name.rsplit('_', 1)[1]}"  # the same as the headline, or beside it
        metrics = {k: progress[k] for k in (*REPORTED, name, center)} | self.restored
        checkpointed = bool(progress.get("checkpoint"))
        if not (self.every_report or checkpointed):
            tune.report(metrics)
            return
        if not checkpointed:  # PBT may copy any report's state
            coordinator.checkpoint()
        with tempfile.TemporaryDirectory(prefix="wv-tune-") as folder:
            export_checkpoint(coordinator.run, coordinator.round, self.trial_id, Path(folder))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def final(self, coordinator: Coordinator, summary: dict[str, Any]) -> None:
        """The run's end: its summary's numbers, done. Also when the run had ended before
        a pause (Tune then still waits for its end); PBT cannot pause it again."""
        from ray import tune

        last = [r["train_loss"] for r in coordinator.rows if r["round"] == coordinator.round]
        losses = [loss for loss in last if loss is not None]
        tests = ("center_test", "ensemble_test", "replica_mean_test")
        numbers = {k: v for k, v in summary.items() if k.startswith(tests)}
        tune.report({
            "round": summary["rounds"],
            "mean_loss": sum(losses) / len(losses) if losses else math.nan,
            "mean_distance": summary["mean_distance_to_center"], "gamma": summary["final_gamma"],
            **numbers, **(self.restored or lineage(coordinator.run)), "done": True,
        })  # fmt: skip
