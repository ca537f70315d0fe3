"""Tier 4: the two example projects, as a user runs them: the console script with import
paths from the project's folder, and `ray job submit --working-dir examples/<name>` (in
test_job_submit.py, which has the head).

The projects live outside the package; their model, data and loss are importable only
from their own folder (the job's working directory on every node). Each way in runs
one of them, so that both cross a process boundary once: the in-process tier trains
both with every algorithm (tests/inprocess/test_user_models.py), and a second example
through the same door would test the door again, not the example.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import BIN

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
SHORT = {"gru_mnist1d": ["train.rounds=4", "train.eval_every=2", "data.kwargs={train_size=400}"],
         "regression": ["train.rounds=6", "train.eval_every=3"]}  # fmt: skip
HEADLINE = {"gru_mnist1d": "center_test_accuracy", "regression": "center_test_loss"}


def sets(example: str, storage: Path) -> list[str]:
    items = [*SHORT[example], f"run.storage={storage}"]
    return [arg for item in items for arg in ("--set", item)]


CONSOLE_SCRIPT_RUNS = "regression"
"""The example the console script runs; `ray job submit` runs the other."""


def test_the_console_script_trains_an_example_by_its_import_paths(tmp_path: Path) -> None:
    example = CONSOLE_SCRIPT_RUNS
    env = {**os.environ, "RAY_ADDRESS": "local", "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["widevalley", "train", "--config", "config.toml", *sets(example, tmp_path)],
        cwd=REPO / "examples" / example, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["headline"] == HEADLINE[example]
    kind = "acc" if example == "gru_mnist1d" else "loss"
    assert f"center test {kind}" in done.stdout
