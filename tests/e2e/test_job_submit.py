"""Tier 4: `ray start --head` on 127.0.0.1 and `ray job submit` of the smoke config."""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

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
        [str(BIN / "ray"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on loopback; the job's `python` is this venv's (PATH), auth by token."""
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


def test_submitted_smoke_job_matches_a_local_run(head, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    address, env = head
    storage = tmp_path / "runs"
    submitted = ray_cli(
        "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
        "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
        "--set", f"run.storage={storage}", "--set", f"data.root={tmp_path / 'data'}",
        env=env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert "round    20/20" in output and "center_sha256" in output
    summary = json.loads((storage / "smoke" / "summary.json").read_text())

    local = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
         "--set", f"run.storage={tmp_path / 'local'}", "--set", f"data.root={tmp_path / 'data'}"],
        cwd=REPO, env={k: v for k, v in env.items() if k != "RAY_ADDRESS"},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert local.returncode == 0, local.stdout + local.stderr
    assert f"center_sha256 {summary['center_sha256']}" in local.stdout
