"""Tier 4: `python -m jobs.train` while a `ray start --head` cluster runs on this machine.

Ray records a running cluster in <temp>/ray/ray_current_cluster, and a plain ray.init()
attaches to it; jobs.train used to pass num_cpus to that existing cluster and die with a
traceback. Now it attaches too and says so in its first line (RAY_ADDRESS=local: a
private Ray instead). The head here records itself under its own RAY_TMPDIR, so no
other test's ray.init() can find it, and it is stopped by its own session's pids.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BIN, free_port, node_ports, ray_start, stop_session

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture
def recorded_head() -> Iterator[dict[str, str]]:
    """A head started as a user would (`ray start --head`, auth left to Ray); yields the
    environment in which this machine's Ray lookups find it."""
    # A short path: Ray's socket paths under it must stay below the 107-byte limit.
    temp = Path(tempfile.mkdtemp(prefix="wv-attach-", dir="/tmp"))
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TMPDIR": str(temp),
           "RAY_AUTH_TOKEN_PATH": str(token)}  # fmt: skip
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    sid, _ = ray_start(
        "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}", *node_ports(), "--num-cpus=2",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
        "--disable-usage-stats", env=env,
    )  # fmt: skip
    try:
        assert (temp / "ray" / "ray_current_cluster").exists()
        yield env
    finally:
        stop_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


def train(env: dict[str, str], storage: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
         "--set", f"run.storage={storage}", "--set", f"data.root={storage.parent / 'data'}",
         "--set", "train.rounds=2", "--set", "train.eval_every=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_train_attaches_to_a_running_head_and_says_so(
    recorded_head: dict[str, str], tmp_path: Path
) -> None:
    attached = train(recorded_head, tmp_path / "attached")
    assert attached.returncode == 0, attached.stdout + attached.stderr
    first = attached.stdout.splitlines()[0]
    assert "the Ray cluster that `ray start` left running at" in first, first
    assert "Traceback" not in attached.stderr

    private = train({**recorded_head, "RAY_ADDRESS": "local"}, tmp_path / "private")
    assert private.returncode == 0, private.stdout + private.stderr
    assert "on a local Ray with" in private.stdout.splitlines()[0]
