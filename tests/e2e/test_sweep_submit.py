"""Tier 4: a sweep submitted with `ray job submit` to `ray start --head` on 127.0.0.1.

The head is set up as in test_job_submit.py (its fixture is duplicated here, not shared):
the job's `python` is this venv's (PATH), the job CLI authenticates with the token that
`ray start` writes (RAY_AUTH_MODE=token), and everything lives in a temp dir.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from jobs.config import load_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on loopback with 2 CPUs; yields the dashboard URL and the CLI's env."""
    if ray.is_initialized():  # the local-Ray tier's session shares our two cores
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    started = ray_cli(
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--temp-dir={temp}", "--disable-usage-stats", env=env,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        ray_cli("stop", "--force", env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_submitted_sweep_runs_its_trials_as_tune_actors_and_writes_its_results(
    head, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
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
