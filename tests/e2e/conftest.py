"""Tier 4 fixtures: a Ray head started with `ray start` on loopback, and the ray CLI.

The job's `python` is this venv's (PATH first), the job CLI authenticates with the token
that `ray start` writes (RAY_AUTH_MODE=token), and everything lives in a temp dir.
"""

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray

BIN = Path(sys.executable).parent
RayCli = Callable[..., subprocess.CompletedProcess[str]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ray_cli(
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


@pytest.fixture(scope="session")
def ray_cli() -> RayCli:
    return run_ray_cli


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head on 127.0.0.1 with 2 CPUs; yields the dashboard URL and the CLI's env."""
    if ray.is_initialized():  # the local-Ray tier's session shares our two cores
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    started = run_ray_cli(
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--temp-dir={temp}", "--disable-usage-stats", env=env,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        run_ray_cli("stop", "--force", env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
