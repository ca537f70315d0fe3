"""Tier 4: `ray start --head` on 127.0.0.1 and `ray job submit`: the smoke config, its
stop and its driver's loss, and the two example projects as working directories."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from tests.e2e.test_examples import CONSOLE_SCRIPT_RUNS, HEADLINE
from tests.e2e.test_examples import SHORT as EXAMPLES
from tests.e2e.test_examples import sets as example_sets
from tests.support import RayCli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def test_submitted_smoke_job_matches_the_run_in_this_process(
    head: tuple[str, dict[str, str]], ray_cli: RayCli, tmp_path: Path, built_data_root: Path
) -> None:
    address, env = head
    storage = tmp_path / "runs"
    submitted = ray_cli(
        "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
        "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
        "--set", f"run.storage={storage}", "--set", f"data.root={built_data_root}",
        env=env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert "round    20/20" in output and "center_sha256" in output
    summary = json.loads((storage / "smoke" / "summary.json").read_text())

    # The same run in this process: the transport changes no bit (a private local Ray's
    # runs are checked against it too: tests/localray/test_replica_actors.py).
    from coordinator.coordinator import Coordinator
    from coordinator.groups import LocalGroup
    from foundation.config import load_config

    sets = [f"run.storage={tmp_path / 'here'}", f"data.root={built_data_root}"]
    here = Coordinator(load_config(REPO / "jobs/configs/smoke.toml", sets), LocalGroup)
    while not here.done:
        here.step()
    assert here.finish()["center_sha256"] == summary["center_sha256"]
    here.shutdown()


# Enough rounds after the first checkpoint (round 25) for `ray job stop` to land first.
ROUNDS = 600
LONG = ["--config", "jobs/configs/smoke.toml", "--set", f"train.rounds={ROUNDS}",
        "--set", "train.checkpoint_every=25", "--set", "train.eval_every=200"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_sha(tmp_path_factory: pytest.TempPathFactory, built_data_root: Path) -> str:
    """The LONG run without interruption, in-process (the transport changes no bit):
    the center both resume tests must end with, computed once for both."""
    from coordinator.coordinator import Coordinator
    from coordinator.groups import LocalGroup
    from foundation.config import load_config

    where = tmp_path_factory.mktemp("whole")
    sets = [LONG[i + 1] for i in range(2, len(LONG), 2)]
    sets += [f"run.storage={where / 'runs'}", f"data.root={built_data_root}"]
    coordinator = Coordinator(load_config(REPO / LONG[1], sets), LocalGroup)
    while not coordinator.done:
        coordinator.step()
    sha: str = coordinator.finish()["center_sha256"]
    coordinator.shutdown()
    return sha


def test_ray_job_stop_then_resubmit_resumes_to_the_same_center(
    head: tuple[str, dict[str, str]],
    ray_cli: RayCli,
    tmp_path: Path,
    uninterrupted_sha: str,
    built_data_root: Path,
) -> None:
    address, env = head
    args = [
        *LONG,
        "--set",
        f"run.storage={tmp_path / 'runs'}",
        "--set",
        f"data.root={built_data_root}",
    ]
    submit = ["job", "submit", f"--address={address}", f"--working-dir={REPO}"]
    started = ray_cli(*submit, "--no-wait", "--", "python", "-m", "jobs.train", *args, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    job = re.search(r"raysubmit_\w+", started.stdout + started.stderr)
    assert job is not None, started.stdout
    # Stop it once a checkpoint is behind it. The run's events.jsonl is a local file: a
    # look costs nothing, where each `ray job logs` would start the CLI on the cores the
    # job trains on.
    events = tmp_path / "runs" / "smoke" / "events.jsonl"
    deadline = time.time() + 240
    while '"event": "checkpoint"' not in (events.read_text() if events.exists() else ""):
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    stopped = ray_cli("job", "stop", f"--address={address}", job.group(0), env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    logs = ray_cli("job", "logs", f"--address={address}", job.group(0), env=env).stdout
    assert "· checkpoint" in logs, logs
    assert f"round   {ROUNDS}/{ROUNDS}" not in logs, "the job finished before it could be stopped"

    again = ray_cli(*submit, "--", "python", "-m", "jobs.train", *args, env=env)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    resumed = re.search(r"resuming from the checkpoint at round (\d+)", output)
    assert resumed is not None and 0 < int(resumed.group(1)) < ROUNDS, output
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["resumed_from"] == int(resumed.group(1))
    assert summary["center_sha256"] == uninterrupted_sha


def test_driver_killed_with_sigkill_resumes_to_the_same_center(
    tmp_path: Path, uninterrupted_sha: str, built_data_root: Path
) -> None:
    if ray.is_initialized():
        ray.shutdown()
    args = [
        *LONG,
        "--set",
        f"run.storage={tmp_path / 'runs'}",
        "--set",
        f"data.root={built_data_root}",
    ]
    command = [sys.executable, "-m", "jobs.train", *args]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Its own session: SIGKILL takes the driver and the local Ray it started, at once.
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    assert driver.stdout is not None
    for line in driver.stdout:
        if "· checkpoint" in line:
            os.killpg(driver.pid, signal.SIGKILL)
            break
    driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    time.sleep(2)  # let the killed Ray's ports close
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600, check=False)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from the checkpoint at round 25" in again.stdout
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["center_sha256"] == uninterrupted_sha


def test_ray_job_submit_with_the_example_as_working_dir(
    head: tuple[str, dict[str, str]], ray_cli: RayCli, tmp_path: Path
) -> None:
    """The example the console-script test does not run (test_examples.py says why one)."""
    [example] = set(EXAMPLES) - {CONSOLE_SCRIPT_RUNS}
    address, env = head
    submitted = ray_cli(
        "job", "submit", f"--address={address}", f"--working-dir={REPO / 'examples' / example}",
        "--", "widevalley", "train", "--config", "config.toml", *example_sets(example, tmp_path),
        env=env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert "center_sha256" in output and "on the Ray cluster at" in output
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    assert summary["headline"] == HEADLINE[example] and summary["rounds"] > 0
