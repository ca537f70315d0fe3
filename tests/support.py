"""Helpers the test tiers share: the typed config factory, the ray CLI, stopping a
cluster's own processes. Importable as `tests.support` (pytest's pythonpath is the repo).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from foundation.config import Config

ConfigFactory = Callable[..., Config]
"""make_config(*overrides, name=...) -> a validated Config on a small budget."""

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


def stop_processes_of(marker: str, grace_s: float = 10.0) -> None:
    """Stop the processes whose command line names `marker` (a cluster's own temp dir):
    `ray stop` would stop every Ray process on the machine, other tests' too."""

    def matching() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # gone meanwhile
            if marker in cmdline:
                pids.append(int(proc.name))
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while matching() and time.monotonic() < deadline:
            time.sleep(0.2)
