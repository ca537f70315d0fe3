"""Tier 2: how a `python -m jobs…` command ends (jobs.cli.exit_now, jobs.cli.guarded)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ray.exceptions import RayTaskError

from cluster.driver import HostHere
from cluster.stopping import StopFlag
from coordinator.failures import DivergenceError
from coordinator.lease import LeaseHeld
from foundation.storage import StorageError
from jobs.cli import guarded

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import atexit
from jobs.cli import exit_now
atexit.register(lambda: print("exit handler ran", flush=True))
print("output", end="")  # no newline: still in the buffer when exit_now is called
exit_now(3)
print("never")
"""


def test_exit_now_runs_the_exit_handlers_flushes_and_keeps_the_status() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stdout == "outputexit handler ran\n"


class _FailingHost:
    """Stands in for the Coordinator: advance() raises `error`; shutdown() is recorded."""

    def __init__(self, error: Exception) -> None:
        self.error, self.closed = error, False

    def advance(self, budget_s: float) -> None:
        raise self.error

    def shutdown(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StorageError("cannot write metrics.parquet: disk full"), 1),  # mid-run: a failed run
        (LeaseHeld("runs/smoke is being written by job 01 (driver pid 7)"), 2),  # bad input
        (DivergenceError("every replica diverged"), 1),
        # A replica's error reaches the Coordinator wrapped by Ray; the line names its own.
        (RayTaskError("round", "Traceback …", ValueError("bad loss")).as_instanceof_cause(), 1),
    ],
)
def test_an_error_of_the_coordinator_in_this_process_exits_as_from_an_actor(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # On the private local Ray the Coordinator runs in the driver (cluster/driver.py,
    # HostHere): its errors must end the command as they did from the actor (RayError).
    host, fake = HostHere(), _FailingHost(error)
    vars(host)["coordinator"] = fake

    def body() -> int:
        try:
            with host.errors():  # as cluster/driver.py's run() drives it
                host.steppable().advance(0.25)
        finally:
            host.close()
        return 0

    assert guarded(body) == code
    assert fake.closed
    cause = error.cause if isinstance(error, RayTaskError) else error
    said = str(cause) if code == 2 else f"{type(cause).__name__}: {cause}"
    assert capsys.readouterr().err.splitlines() == [f"wv: error: {said}"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_second_stop_signal_ends_in_one_line_with_its_status(
    signum: signal.Signals, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = StopFlag()
    flag._handle(signum, None)  # the first: a polite stop at the next round

    def body() -> int:
        flag._handle(signum, None)  # the second, while the first is being served
        return 0

    assert guarded(body) == 128 + signum
    assert capsys.readouterr().err.splitlines() == [
        f"wv: stopped at once by {signum.name}; run the same command again to resume from "
        "the last checkpoint"
    ]
