"""Tier 4: a sweep submitted with `ray job submit` to `ray start --head` on 127.0.0.1.

The head and the ray CLI come from tests/e2e/conftest.py.
"""

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from foundation.config import load_config
from tests.support import RayCli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def test_submitted_sweep_runs_its_trials_as_tune_actors_and_writes_its_results(
    head: tuple[str, dict[str, str]], ray_cli: RayCli, tmp_path: Path
) -> None:
    address, env = head
    storage = tmp_path / "sweeps"
    submitted = ray_cli(
        "job", "submit", f"--address={address}", f"--working-dir={REPO}",
        "--submission-id=wv-sweep-smoke", "--",
        "python", "-m", "jobs.sweep", "--config", "jobs/configs/sweep_smoke.toml",
        "--set", f"run.storage={storage}", "--set", f"data.root={tmp_path / 'data'}",
        "--set", "train.rounds=6",
        env=env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert "on the Ray cluster at" in output and "4 trials in" in output, output
    assert "Job 'wv-sweep-smoke' succeeded" in output, output

    sweep_dir = storage / "sweep-smoke"
    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {(r["scoping.gamma0"], r["scoping.kind"]) for r in rows} == {
        (g, k) for g in (0.001, 0.1) for k in ("exponential", "cosine")
    }
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["replicas"] == 2
    assert load_config(sweep_dir / "best.toml").train.rounds == 6
    assert (sweep_dir / "plots" / "sweep.png").stat().st_size > 10_000

    # What the dashboard shows: the job, and the trials as Tune actors (ImplicitFunc)
    # beside the replica actors each trial started in its placement group.
    listed = ray_cli("list", "actors", f"--address={address}", "--format=json",
                     "--limit=200", "--detail", env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    classes = [a["class_name"] for a in json.loads(listed.stdout)]
    assert classes.count("ImplicitFunc") == 4, classes
    assert classes.count("Replica") == 8, classes
    status = ray_cli("job", "status", f"--address={address}", "wv-sweep-smoke", env=env)
    assert "Job 'wv-sweep-smoke' succeeded" in status.stdout + status.stderr
