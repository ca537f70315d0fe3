"""Tier 4 fixtures: a Ray head started with `ray start` on loopback, and the ray CLI.

The job's `python` is this venv's (PATH first), the head and the job CLI use token auth
(RAY_AUTH_MODE=token) with a fresh token in the temp dir (RAY_AUTH_TOKEN_PATH): the tests
neither need nor touch ~/.ray/auth_token, which a clean machine does not have.
"""

import os
import secrets
import shutil
from collections.abc import Iterator

import pytest
import ray

from tests.support import (
    BIN,
    RayCli,
    free_port,
    node_ports,
    ray_start,
    run_ray_cli,
    stop_session,
    wait_for_job_agent,
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
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_AUTH_TOKEN", None)  # it would win over the path
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    address = f"http://127.0.0.1:{dashboard}"
    sid, _ = ray_start(
        "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}", *node_ports(), "--num-cpus=2",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
        "--disable-usage-stats", env=env,
    )  # fmt: skip
    try:
        wait_for_job_agent(address, env)
        yield address, env
    finally:
        stop_session(sid)  # not `ray stop`: it would stop every Ray process here
        shutil.rmtree(temp, ignore_errors=True)
