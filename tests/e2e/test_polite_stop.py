"""Tier 4: `python -m jobs.train` as an operator meets it: SIGTERM, SIGINT, two at once.

SIGTERM (what `ray job stop` and Kubernetes send) and SIGINT stop a run at the next
round with a checkpoint and a `stopped` event, exit 143 or 130, and the rerun resumes
to the center of an uninterrupted run (the SIGTERM test's rerun on a private Ray started
with plain ray.init(), WV_PLAIN_RAY=1). Two runs started together on one run directory:
one trains, the other fails with one line naming it (and the winner's own process, where
its Coordinator runs); the winner's dashboard comes up after its first round and goes
with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
SETS = ["train.rounds=160", "train.checkpoint_every=0", "train.eval_every=80"]
DATA_ROOT = Path("unset")  # the session's built MNIST-1D cache, set before every test


@pytest.fixture(autouse=True)
def shared_data(built_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run here reads the session's MNIST-1D cache instead of generating its own."""
    monkeypatch.setattr(f"{__name__}.DATA_ROOT", built_data_root)


def command(tmp_path: Path, *extra: str) -> list[str]:
    sets = [*SETS, f"run.storage={tmp_path / 'runs'}", f"data.root={DATA_ROOT}", *extra]
    return [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
            *[arg for item in sets for arg in ("--set", item)]]  # fmt: skip


def start(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = "local"  # a private Ray, whatever else runs on this machine
    return subprocess.Popen(
        command(tmp_path, *extra), cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def read_until(proc: subprocess.Popen[str], start: str, within_s: float = 240) -> list[str]:
    """The lines of its output up to the first that starts with `start`, that one too
    (the process is killed if that takes over `within_s`)."""
    assert proc.stdout is not None
    seen = []
    watchdog = threading.Timer(within_s, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(start):
                return seen
    finally:
        watchdog.cancel()
    raise AssertionError(f"no line starting {start!r} in:\n{''.join(seen)}")


def signal_at_round(proc: subprocess.Popen[str], round_: int, signum: int) -> tuple[str, str]:
    """Wait for the progress line of `round_`, send `signum`; returns (stdout, stderr)."""
    seen = read_until(proc, f"round {round_:>5}/")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return "".join(seen) + out, err


def answers(address: str) -> bool:
    """Whether a Ray dashboard serves its page at `address` (the page needs no token,
    where Ray's token auth is on; its API would)."""
    try:
        with urllib.request.urlopen(address, timeout=30) as reply:
            return b"<title>Ray Dashboard</title>" in reply.read()
    except OSError:  # refused: nothing listens there
        return False


def uninterrupted_sha(tmp_path: Path) -> str:
    sets = [*SETS, f"run.storage={tmp_path / 'whole'}", f"data.root={DATA_ROOT}"]
    coordinator = Coordinator(load_config(REPO / "jobs/configs/smoke.toml", sets), LocalGroup)
    while not coordinator.done:
        coordinator.step()
    sha: str = coordinator.finish()["center_sha256"]
    coordinator.shutdown()
    return sha


def events(tmp_path: Path) -> list[dict[str, object]]:
    text = (tmp_path / "runs" / "smoke" / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_sigterm_checkpoints_stops_and_the_rerun_resumes_exactly(tmp_path: Path) -> None:
    out, err = signal_at_round(start(tmp_path), 30, signal.SIGTERM)
    first = events(tmp_path)[-1]
    assert first["event"] == "stopped" and first["reason"] == "SIGTERM", first
    stopped_at = first["round"]
    assert f"wv: stopped by SIGTERM after round {stopped_at}, checkpointed" in err, out + err
    assert "Traceback" not in err and "SIGTERM received" not in err
    assert (tmp_path / "runs" / "smoke" / "checkpoints" / f"round-{stopped_at:06d}").is_dir()

    # The rerun starts its private Ray with plain ray.init() (WV_PLAIN_RAY=1: none of
    # Ray's private API, cluster/fast_start.py): the numbers do not depend on how.
    plain = {**os.environ, "RAY_ADDRESS": "local", "WV_PLAIN_RAY": "1", "WV_DASHBOARD": "0"}
    rerun = subprocess.run(command(tmp_path), cwd=REPO, env=plain, capture_output=True,
                           text=True, timeout=300, check=False)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from the checkpoint at round {stopped_at}" in rerun.stdout
    assert f"center_sha256 {uninterrupted_sha(tmp_path)}" in rerun.stdout


def test_two_runs_started_together_one_trains_one_fails_and_sigint_stops_the_first(
    tmp_path: Path,
) -> None:
    long = "train.rounds=100000"  # still running when it is signalled
    procs = [start(tmp_path, long), start(tmp_path, long)]
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    _, loser_err = loser.communicate(timeout=60)
    assert loser.returncode == 2, loser_err
    lines = [line for line in loser_err.splitlines() if line.strip()]
    assert len(lines) == 1 and "smoke is being written by job" in lines[0], loser_err
    # On the private Ray it started, the winner's Coordinator runs in the winner's own
    # process (cluster/driver.py, HostHere): that process holds the run directory.
    assert f"pid {winner.pid} on " in lines[0], loser_err
    # The private Ray's dashboard starts once the run is training (cluster/fast_start.py),
    # on the CPU the run leaves: said after the first round, it answers while the run
    # goes on, and goes with it.
    seen = read_until(winner, "wv: Ray dashboard http://127.0.0.1:")
    assert "(dashboard to follow)" in seen[0] and seen[1].startswith("round     1/"), seen
    address = seen[-1].split()[-1]
    assert answers(address), address
    winner.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = winner.communicate(timeout=120)
    assert winner.returncode == 130, out + err
    assert not answers(address), f"{address} still answers after the run ended"
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds.count("start") == 1 and "resume" not in kinds
    assert events(tmp_path)[-1]["reason"] == "SIGINT"


def test_sighup_stops_as_sigterm_does(tmp_path: Path) -> None:
    """A closed terminal or a dropped ssh session: it exited 129 at once, no checkpoint."""
    out, err = signal_at_round(start(tmp_path), 20, signal.SIGHUP)
    last = events(tmp_path)[-1]
    assert last["event"] == "stopped" and last["reason"] == "SIGHUP", out + err
    assert f"wv: stopped by SIGHUP after round {last['round']}, checkpointed" in err, out + err
    assert (tmp_path / "runs" / "smoke" / "checkpoints" / f"round-{last['round']:06d}").is_dir()


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path: Path) -> None:
    """It printed a 78-line KeyboardInterrupt traceback."""
    # Rounds of a few seconds: the second signal comes while the first waits for one.
    proc = start(tmp_path, "train.rounds=100000", "algorithm.coupling_period=5000")
    read_until(proc, "round     1/")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals at once are one to Python: deliver it first
    proc.send_signal(signal.SIGINT)  # impatient: before the polite stop is done
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # Stopped at once, or politely when the first stop was done before the second came
    # (then the second fell in the clean-up of the private Ray, where it is ignored).
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wv: stopped"), err
