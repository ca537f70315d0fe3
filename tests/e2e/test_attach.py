"""Tier 4: which Ray `python -m jobs.train` uses, and what it leaves running after.

Ray records a running cluster in <temp>/ray/ray_current_cluster, and a plain ray.init()
attaches to it; jobs.train used to pass num_cpus to that existing cluster and die with a
traceback. Now it attaches too and says so in its first line (RAY_ADDRESS=local: a
private Ray instead). The head here records itself under its own RAY_TMPDIR, so no
other test's ray.init() can find it, and it is stopped by its own session's pids.
A run stops only the private Ray it started (cluster/session.py release), also when
bad data turns up while that Ray is still starting on its thread.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BIN, free_port, node_ports, ray_start, session_processes, stop_session

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture
def recorded_head() -> Iterator[tuple[dict[str, str], int]]:
    """A head started as a user would (`ray start --head`, auth left to Ray); yields the
    environment in which this machine's Ray lookups find it, and its session id."""
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
        yield env, sid
    finally:
        stop_session(sid)
        shutil.rmtree(temp, ignore_errors=True)


def train(
    env: dict[str, str], storage: Path, data_root: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """The run's result, and the id of the session it ran in (its own)."""
    with subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
         "--set", f"run.storage={storage}", "--set", f"data.root={data_root}",
         "--set", "train.rounds=2", "--set", "train.eval_every=2", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def left_behind(sid: int, grace_s: float = 5.0) -> list[str]:
    """The commands of the processes of session `sid` still there after `grace_s`."""
    deadline = time.monotonic() + grace_s
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [Path(f"/proc/{pid}/cmdline").read_text()[:80] for pid in session_processes(sid)]


def test_train_attaches_to_a_running_head_and_says_so(
    recorded_head: tuple[dict[str, str], int], tmp_path: Path, built_data_root: Path
) -> None:
    env, head = recorded_head
    attached, _ = train(env, tmp_path / "attached", built_data_root)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    first = attached.stdout.splitlines()[0]
    assert "the Ray cluster that `ray start` left running at" in first, first
    assert "Traceback" not in attached.stderr
    # The run stops only a Ray it started itself: the head is still there.
    assert any("gcs_server" in Path(f"/proc/{pid}/cmdline").read_text()
               for pid in session_processes(head))  # fmt: skip

    private, sid = train({**env, "RAY_ADDRESS": "local"}, tmp_path / "private", built_data_root)
    assert private.returncode == 0, private.stdout + private.stderr
    assert "on a local Ray with" in private.stdout.splitlines()[0]
    # Its own Ray is stopped when it exits, agents included (stopping it all at once
    # once left the raylet's agents running for a minute).
    assert left_behind(sid) == []


def test_bad_data_found_while_ray_starts_stops_that_ray(tmp_path: Path) -> None:
    # The config loads, so jobs.train starts its private Ray on a thread while it imports
    # torch and loads the data; the data is missing: exit 2 with the one line, and the
    # Ray whose start was under way is stopped, nothing of it left running.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done, sid = train(env, tmp_path / "runs", tmp_path / "data", "--set", "data.dataset=mnist")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("wv: error: Raw mnist files are missing"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert left_behind(sid) == []


@pytest.mark.parametrize(("signum", "after_s"), [(signal.SIGTERM, 0.2), (signal.SIGHUP, 2.5)])
def test_a_stop_signal_in_the_first_seconds_stops_the_ray_being_started(
    tmp_path: Path, signum: signal.Signals, after_s: float
) -> None:
    """SIGTERM in the first seconds (before the run's polite stop exists) exited 143 with
    no output; a Ray whose start was under way could be left behind. A signal that cuts
    `import ray` short must not make the clean-up import it again (a fresh clone's cold
    imports showed that)."""
    storage = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
         "--set", f"run.storage={storage}", "--set", f"data.root={tmp_path / 'data'}"],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": "local"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    until_caught(proc.pid, signum)  # the command's own handler is in place (Python's
    time.sleep(after_s)  # default is what it replaces); then in the imports, or Ray's start
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert "round " not in out, out  # it was early enough
    assert proc.returncode == 128 + signum, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"wv: stopped at once by {signum.name}"), err
    assert left_behind(proc.pid) == []


def until_caught(pid: int, signum: int, within_s: float = 60) -> None:
    """Wait until process `pid` catches `signum` (SigCgt in /proc/<pid>/status)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(x for x in status.splitlines() if x.startswith("SigCgt:")).split()[1], 16)
        if caught & (1 << (signum - 1)):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never caught signal {signum}")
