"""Stops what is left of a private local Ray once the driver that started it is gone.

Ray ties the GCS and the raylet to the driver that started them (a parent-death signal),
and replica workers leave with their raylet; but the raylet's two agents
(ray::DashboardAgent, ray::RuntimeEnvAgent) notice a dead raylet only after five
checks and then wait on the dead GCS: after a SIGKILLed driver both were still there
when tests/e2e/test_private_ray.py stopped waiting (5 s), holding ports and memory.
This process, started right after the private Ray (cluster/session.py), watches the
driver; when the driver dies, however it died, it SIGKILLs every process of that Ray
still there. The driver's death shows twice: the pipe to this process's stdin closes
(the kernel closes a dead process's files) and, on Linux 5.3+, a pidfd of the driver
becomes readable. When the driver stops its Ray itself, it writes "q" to that pipe
first (stop()), and this process exits without touching anything.

It knows Ray's processes as the ones the driver started for Ray (passed as arguments)
and everything below them, refreshed every second while the driver lives, so workers
started later are included; no other child of the driver is ever touched (a user's own
subprocesses are theirs).

Run as a script (`python cluster/reaper.py DRIVER_PID RAY_PID...`): it imports only the
standard library and psutil, so it starts in a few tens of milliseconds and does not
depend on where the package is installed.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterable

import psutil

REFRESH_S = 1.0


def start(driver_pid: int, ray_pids: Iterable[int]) -> subprocess.Popen[bytes]:
    """Start the watcher for this driver and the Ray processes it started; stop() it
    once that Ray is stopped."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(driver_pid), *map(str, ray_pids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        # Its own session: a Ctrl-C or a closed terminal that reaches the driver's process
        # group must not take the watcher with it.
        start_new_session=True,
    )


def stop(watcher: subprocess.Popen[bytes]) -> None:
    """Tell the watcher that the driver stopped its Ray itself: it exits, killing nothing."""
    assert watcher.stdin is not None
    try:
        watcher.stdin.write(b"q")
        watcher.stdin.close()
        watcher.wait(timeout=2)  # it exits at once; waited for so that no zombie is left
    except (OSError, subprocess.TimeoutExpired):
        pass  # gone already, or slow: it exits on its own either way


def _descendants(roots: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for root in roots:
        try:
            found.append(root)
            found.extend(root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _driver_exit_handle(driver_pid: int) -> int | None:
    """A descriptor that becomes readable when the driver exits (Linux 5.3+), or None,
    in which case the driver is polled every REFRESH_S."""
    try:
        return os.pidfd_open(driver_pid)
    except (AttributeError, OSError):
        return None


def watch(driver_pid: int, ray_pids: list[int]) -> bool:
    """Wait until the driver exits (True: its Ray's leftovers were killed) or says it
    stopped its Ray itself (False)."""
    roots = []
    for pid in ray_pids:
        try:
            roots.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    known: dict[int, psutil.Process] = {}
    exit_handle = _driver_exit_handle(driver_pid)
    waitables = [sys.stdin.fileno()] + ([exit_handle] if exit_handle is not None else [])
    while True:
        for process in _descendants(roots):
            known.setdefault(process.pid, process)
        ready, _, _ = select.select(waitables, [], [], REFRESH_S)
        if sys.stdin.fileno() in ready:
            if os.read(sys.stdin.fileno(), 1) == b"q":
                return False
            break  # end of file without "q": the driver is gone
        if exit_handle in ready or not psutil.pid_exists(driver_pid):
            break
    for process in _descendants(roots):
        known.setdefault(process.pid, process)
    for process in known.values():
        try:
            process.kill()  # psutil refuses a pid that was reused by another process
        except psutil.Error:
            continue
    return True


if __name__ == "__main__":
    watch(int(sys.argv[1]), [int(arg) for arg in sys.argv[2:]])
