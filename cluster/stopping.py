"""A polite stop: SIGTERM (what `ray job stop`, Kubernetes and process managers send),
SIGINT (Ctrl-C) and SIGHUP (a closed terminal, a dropped ssh session) end a run at the
next round boundary, with a checkpoint.

The first signal only sets a flag: the driver finishes the round in flight, asks the
Coordinator to checkpoint, log `stopped` and release the run directory, and exits with
128 + the signal's number (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP). A second
signal stops at once (StopNow, a KeyboardInterrupt: one line, no traceback, the last
checkpoint resumes). `ray job stop` sends SIGKILL RAY_JOB_STOP_WAIT_TIME_S
seconds (3 by default) after SIGTERM, so the round in flight and the checkpoint must fit
in that; raise it for large models (docs/reliability.md).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from foundation.errors import WideValleyError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 2.5  # inside `ray job stop`'s default 3 s before its SIGKILL


def stop_grace_s() -> float:
    """Seconds the driver gives a polite stop: half a second less than `ray job stop`
    waits before its SIGKILL (RAY_JOB_STOP_WAIT_TIME_S reaches the job's environment
    when set in its runtime env), else STOP_GRACE_S."""
    wait = os.environ.get("RAY_JOB_STOP_WAIT_TIME_S")
    return max(1.0, float(wait) - 0.5) if wait and wait.isdigit() else STOP_GRACE_S


class RunInterrupted(WideValleyError):
    """The run stopped on a signal after a checkpoint; resubmitting resumes it."""

    def __init__(self, signum: int, round_: int | None) -> None:
        name = signal.Signals(signum).name
        saved = (
            f"after round {round_}, checkpointed" if round_ is not None
            else "without a new checkpoint (the last periodic one resumes)"
        )  # fmt: skip
        super().__init__(f"stopped by {name} {saved}; run the same command again to resume")
        self.signum = signum
        self.exit_code = 128 + signum


class StopNow(KeyboardInterrupt):
    """A second stop signal: end at once, without the polite stop's checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop now
            raise StopNow(signum)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Handle SIGTERM, SIGINT and SIGHUP inside the block (replacing Ray's own SIGTERM handler,
    which dumps stacks and exits), and restore the previous handlers after it."""
    flag = StopFlag()
    with _handled(STOP_SIGNALS, flag._handle):
        yield flag


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore stop signals inside the block: the last seconds of a command, while it
    stops the private Ray it started. A signal there would end the command midway,
    print a traceback and leave Ray's processes behind, which is worse than waiting."""
    with _handled(STOP_SIGNALS, signal.SIG_IGN):
        yield


def _stop_now(signum: int, frame: FrameType | None) -> None:
    raise StopNow(signum)


@contextmanager
def stop_at_once_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP inside the block stop at once, as Ctrl-C does (StopNow). For a
    command's first seconds, before its run exists to stop politely (imports, Ray's
    start, the input checks): Python's default would end the process with no word and
    leave the private Ray it was starting behind."""
    with _handled((signal.SIGTERM, signal.SIGHUP), _stop_now):
        yield


@contextmanager
def _handled(signums: tuple[int, ...], handler: Any) -> Iterator[None]:
    """`handler` for `signums` inside the block; the previous handlers after it."""
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
