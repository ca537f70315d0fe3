"""Tier 2: uncoupled runs (sgd, esgd: y independent replicas) are judged by their
replicas' mean, not by the center, which is the average of weights no step trained.

Found from outside: a user's regressor under algorithm.kind=sgd scored 0.898 at its
center against 0.002–0.04 for its replicas, and summary.json, the final table, Tune and
sweeps all ranked the run by that center.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import widevalley
from coordinator.report import progress_line, summary_table
from jobs.sweep.space import SweepError
from jobs.sweep.sweepfile import load_sweep

REGRESSION = Path(__file__).resolve().parents[2] / "examples" / "regression"


@pytest.fixture
def regression_project() -> Iterator[None]:
    sys.path.insert(0, str(REGRESSION))
    yield
    sys.path.remove(str(REGRESSION))


def test_an_sgd_run_is_ranked_by_its_replicas_mean(
    tmp_path: Path, regression_project: None, capsys: pytest.CaptureFixture[str]
) -> None:
    result = widevalley.fit(
        REGRESSION / "config.toml", local=True,
        overrides=[f"run.storage={tmp_path}", "algorithm.kind=sgd", "algorithm.replicas=3",
                   "train.rounds=20", "train.eval_every=10"],
    )  # fmt: skip
    s = result.summary
    replicas = s["replica_test_loss"]
    assert s["headline"] == "replica_mean_test_loss" and s["headline_mode"] == "min"
    assert result.headline == pytest.approx(sum(replicas) / 3)
    # The average of three independently trained regressors is no better than its parts.
    assert s["center_test_loss"] > max(replicas), s
    assert "no step trained" in s["center_note"]
    table = summary_table(s, "runs/x")
    assert "center (untrained: see below)" in table and f"note: {s['center_note']}" in table
    printed = capsys.readouterr().out
    assert "round    10/20" in printed and "replica mean test loss" in printed, printed


def test_a_coupled_run_is_still_ranked_by_its_center(
    tmp_path: Path, regression_project: None
) -> None:
    result = widevalley.fit(
        REGRESSION / "config.toml", local=True, verbose=False,
        overrides=[f"run.storage={tmp_path}", "train.rounds=4", "train.eval_every=4"],
    )  # fmt: skip
    s = result.summary
    assert s["headline"] == "center_test_loss" and "center_note" not in s
    assert s["replica_mean_test_loss"] == pytest.approx(sum(s["replica_test_loss"]) / 2)


def test_the_progress_line_names_what_it_ranks_by() -> None:
    base = {"round": 5, "gamma": 0.0, "mean_loss": 0.5, "mean_distance": 1.0, "seconds": 0.01}
    line = progress_line(base | {"headline": "replica_mean_test_accuracy",
                                 "replica_mean_test_accuracy": 0.9}, 10)  # fmt: skip
    assert line.endswith("replica mean test acc 0.9000")
    line = progress_line(base | {"headline": "center_test_loss", "center_test_loss": 0.25}, 10)
    assert line.endswith("center test loss 0.2500")


def sweep_over(tmp_path: Path, kind: str, space: str = "") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'base = "smoke.toml"\n[algorithm]\nkind = "{kind}"\n[sweep]\n'
                    f'[sweep.space]\n"algorithm.lr" = {{grid = [0.05, 0.1]}}\n{space}')  # fmt: skip
    return path


def test_a_sweep_ranks_by_the_runs_headline_unless_told(tmp_path: Path) -> None:
    assert load_sweep(sweep_over(tmp_path, "sgd")).sweep.metric == "replica_mean_test_accuracy"
    assert load_sweep(sweep_over(tmp_path, "rsgd")).sweep.metric == "center_test_accuracy"
    told = load_sweep(sweep_over(tmp_path, "sgd"), ["sweep.metric=center_test_accuracy"])
    assert told.sweep.metric == "center_test_accuracy"
    mixed = sweep_over(tmp_path, "rsgd", '"algorithm.kind" = {grid = ["sgd", "rsgd"]}')
    with pytest.raises(SweepError, match="rank by different numbers"):
        load_sweep(mixed)
