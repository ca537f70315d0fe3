"""Tier 3: a user's own Ray Tune Tuner, with ASHA, drives and stops Wide Valley runs.

The trainable is a plain function that calls widevalley.fit; fit notices the trial and
reports each evaluation through Tune, so ASHA can stop the bad trials early. The model,
data and loss are the regression example's, named by import path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "regression"
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


@pytest.fixture
def example_on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLE))
    yield
    sys.path.remove(str(EXAMPLE))


def trainable(params: dict[str, Any]) -> None:
    """What a user writes: one run per trial, its settings from the trial's parameters."""
    import widevalley

    sys.path.insert(0, params["example"])  # the trial's process imports the user project
    widevalley.fit(
        Path(params["example"]) / "config.toml", local=True, verbose=False,
        overrides=[f"run.storage={params['storage']}", f"algorithm.lr={params['lr']}",
                   "run.name=" + f"lr={params['lr']}", "train.rounds=12", "train.eval_every=2",
                   "algorithm.replicas=2", "algorithm.coupling_period=5"],
    )  # fmt: skip


def test_a_users_tuner_with_asha_stops_the_bad_runs_early(
    tmp_path: Path, example_on_path: None
) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.5}),
        param_space={"lr": tune.grid_search([1e-4, 0.003, 0.05, 0.1]),
                     "storage": str(tmp_path / "runs"), "example": str(EXAMPLE)},
        tune_config=tune.TuneConfig(
            metric="center_test_loss", mode="min", max_concurrent_trials=2,
            scheduler=ASHAScheduler(time_attr="round", max_t=12, grace_period=4,
                                    reduction_factor=2),
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )  # fmt: skip
    grid = tuner.fit()
    assert not grid.errors
    # (config, last reported metrics) of each trial
    trials = [(grid[i].config or {}, grid[i].metrics or {}) for i in range(len(grid))]
    rounds = {config["lr"]: metrics["round"] for config, metrics in trials}
    assert max(rounds.values()) == 12 and min(rounds.values()) < 12, rounds
    best = grid.get_best_result()
    assert (best.metrics or {})["center_test_loss"] < 1.0 and (best.config or {})["lr"] >= 0.05
    finished = [m for _, m in trials if m["round"] == 12]  # its last report: the summary
    assert finished and all("ensemble_test_loss" in m for m in finished)


def one_run(params: dict[str, Any]) -> None:
    """The trainable of docs/your-model.md, as a user writes it: fit() with the trial's lr."""
    import widevalley

    sys.path.insert(0, params["example"])
    widevalley.fit(
        Path(params["example"]) / "config.toml", verbose=False,
        overrides=[f"run.storage={params['storage']}", f"algorithm.lr={params['lr']}",
                   f"run.name=lr={params['lr']}", "train.rounds=8", "train.eval_every=4",
                   "algorithm.replicas=2", "algorithm.coupling_period=5"],
    )  # fmt: skip


@pytest.mark.parametrize("form", ["dict", "factory", "default"])
def test_a_trial_reserving_one_bundle_runs_its_replicas_inside_it(
    tmp_path: Path, example_on_path: None, form: str
) -> None:
    """The simplest resource requests give a trial a placement group of one bundle, which
    the trial's own process holds: the replicas then run inside that reservation (a group
    of their own would wait forever while two trials hold both CPUs)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable: Any = {
        "dict": tune.with_resources(one_run, {"cpu": 1}),
        "factory": tune.with_resources(one_run, tune.PlacementGroupFactory([{"CPU": 1}])),
        "default": one_run,
    }[form]
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.grid_search([0.02, 0.1]), "storage": str(tmp_path / "runs"),
                     "example": str(EXAMPLE)},
        tune_config=tune.TuneConfig(scheduler=ASHAScheduler(time_attr="round", max_t=8),
                                    metric="center_test_loss", mode="min"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )  # fmt: skip
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    # ASHA (max_t 8, rungs at 1 and 4) may stop the worse trial at a rung; none fails.
    last = {(grid[i].config or {})["lr"]: grid[i].metrics or {} for i in range(len(grid))}
    assert {lr: m["round"] in (1, 4, 8) for lr, m in last.items()} == {0.02: True, 0.1: True}
    finished = [lr for lr, m in last.items() if m["round"] == 8]
    assert finished, last
    for lr in finished:  # the last report carries the summary's numbers
        assert "replica_mean_test_loss" in last[lr]
        summary = json.loads((tmp_path / "runs" / f"lr={lr}" / "summary.json").read_text())
        assert summary["rounds"] == 8 and summary["replicas"] == 2
