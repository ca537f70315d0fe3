"""One trial: the Tune trainable, an ordinary run through widevalley.fit (which reports
each evaluation and hands run checkpoints to PBT: widevalley/tuning.py), on the
sweep's base config with the trial's parameters.

This module must stay importable (never `__main__`): Ray pickles run_trial by
reference, and every trial process imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from foundation.config import Config
from jobs.sweep.space import Distribution, build_config

# What trials.parquet keeps of each trial's last report ("round" is the time attribute).
REPORTED = ("round", "mean_loss", "mean_distance", "gamma")


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


# ---- the trainable --------------------------------------------------------------------------


def run_trial(params: dict[str, Any], plan: Plan) -> None:
    """The Tune trainable: one ordinary Wide Valley run through widevalley.fit, which
    notices the trial and reports each evaluation to Tune (widevalley/tuning.py); the
    replicas sit in the trial's placement group, or in its process when `inprocess`."""
    from ray import tune

    from widevalley import fit

    os.environ.update(plan.env)
    trial_id = tune.get_context().get_trial_id() or "trial"
    fit(
        trial_config(plan, params, trial_id), local=plan.inprocess, verbose=False,
        tune_checkpoint_every_report=plan.pbt, allow_changes=plan.allow_changes,
        wandb_group=plan.sweep_name,
    )  # fmt: skip
