"""Tier 2: how a `python -m jobs…` command ends (jobs.entry.exit_now)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import atexit
from jobs.entry import exit_now
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
