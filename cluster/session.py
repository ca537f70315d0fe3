"""Attach to a Ray cluster or start a private local one.

Which Ray a run uses, in order:
1. RAY_ADDRESS (set by `ray job submit`): that cluster; RAY_ADDRESS=local: a private one.
2. A cluster that `ray start --head` left running on this machine: attach to it, as a
   plain `ray.init()` would, and say so (its dashboard then shows the run). A user who
   started a head on purpose expects their runs on it; RAY_ADDRESS=local opts out.
3. Otherwise a private local Ray with this machine's CPUs, its dashboard on 127.0.0.1,
   started after Ray's other processes (in a run, once its first round is done).
   WV_DASHBOARD=0: without one, which leaves the cores to training.

connect_in_background() begins the same on a thread (jobs/train.py, while it imports
torch); release() stops the private Ray that this process started, and nothing else.
What makes the private Ray start and stop fast, and every use of Ray's private API, is
in cluster/fast_start.py (WV_PLAIN_RAY=1 turns it off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from typing import Any

import psutil
import ray

from cluster import fast_start, reaper

# For the private local Ray only (a cluster started elsewhere keeps its own settings):
# its idle workers import torch while the driver is still starting, so the coordinator
# and replica actors that take them skip that import; and a round's result of up to
# 1 MiB (4 replicas of the default MLP: 240 KB) returns inside the reply instead of
# through the object store.
LOCAL_SYSTEM_CONFIG = {
    "preload_python_modules": ["torch"],
    "max_direct_call_object_size": 1 << 20,
}


# Set when connect() started the private local Ray: release() then stops it.
_started_here = False
# The watcher that stops that Ray's leftovers if this process dies first (cluster/reaper.py).
_watcher: subprocess.Popen[bytes] | None = None


_starter: fast_start.Starter | None = None


def connect_in_background() -> None:
    """Begin connect() on a thread, while the caller goes on (jobs/train.py imports torch
    and checks its inputs meanwhile, much of Ray's start being a wait); the next connect()
    waits for it and returns its line (or raises its error)."""
    global _starter
    if _starter is None and not ray.is_initialized():
        _starter = fast_start.Starter(_connect)


def connect(num_cpus: int | None = None, dashboard_now: bool = True) -> str:
    """Attach to or start Ray (see the module's docstring); returns a short description
    for the first progress line. A private Ray's dashboard is started after Ray's other
    processes (cluster/fast_start.py): here, and waited for, if `dashboard_now`; else by
    the caller (a run starts it once its first round is done: cluster/driver.py)."""
    where = _starter.result() if _starter is not None else _connect(num_cpus)
    if not dashboard_now:
        return f"{where} (dashboard to follow)" if fast_start.dashboard_to_come() else where
    address = fast_start.wait_for_dashboard()
    return f"{where}, dashboard {address}" if address else where


def _connect(num_cpus: int | None = None) -> str:
    global _started_here
    if ray.is_initialized():
        return "an already initialized Ray session"
    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "local":
        ray.init(address=address, logging_level=logging.ERROR)
        return f"the Ray cluster at {address}"
    if fast_start.PLAIN and address != "local":
        with contextlib.suppress(ConnectionError):  # none running: start a private one
            ray.init(address="auto", logging_level=logging.ERROR)
            return "the Ray cluster that `ray start` left running (WV_PLAIN_RAY=1)"
    running = None
    if address != "local" and not fast_start.PLAIN:
        running = fast_start.running_cluster_address()
    if running is not None:
        # No explicit address: only then does Ray use the token that `ray start` wrote
        # (~/.ray/auth_token) without RAY_AUTH_MODE=token, as a plain ray.init() does.
        ray.init(logging_level=logging.ERROR)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return (
            f"the Ray cluster that `ray start` left running at {running} ({cpus} CPUs; "
            "RAY_ADDRESS=local runs on a private one instead)"
        )
    # Ray's own start-up chatter goes to stderr; keep it for errors so that our one-line
    # messages stay the only line a user sees, and say where the dashboard is ourselves.
    with_dashboard = os.environ.get("WV_DASHBOARD", "1") != "0"
    dashboard_options: dict[str, Any] = (
        {"dashboard_host": "127.0.0.1"} if with_dashboard else {"include_dashboard": False}
    )
    before = _children()
    with fast_start.dashboard_deferred(), fast_start.on_loopback():  # the dashboard: later
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            logging_level=logging.ERROR,
            _system_config=LOCAL_SYSTEM_CONFIG,
            **dashboard_options,
        )
    _started_here = True
    _watch_for_driver_death(sorted(_children() - before))  # Ray's GCS, raylet, dashboard
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if not with_dashboard:
        return f"a local Ray with {cpus} CPUs, no dashboard (WV_DASHBOARD=0)"
    return f"a local Ray with {cpus} CPUs"


def _watch_for_driver_death(ray_pids: list[int]) -> None:
    """Start the watcher that SIGKILLs this private Ray's leftovers if this process dies
    without release() (a SIGKILL, the OOM killer): cluster/reaper.py says why."""
    global _watcher
    _watcher = reaper.start(os.getpid(), ray_pids)


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


def owns_ray() -> bool:
    """Whether this process started the Ray it is connected to (the private local one)."""
    return _started_here


def release() -> None:
    """Stop the private local Ray that connect() started, if any (a cluster this process
    attached to, or a session someone else initialized, is left as it is).

    Called explicitly, ray.shutdown() skips the half second it sleeps at interpreter exit.
    It stops Ray's processes one after another, each first with SIGTERM and, if still
    there a second later, SIGKILL; the autoscaler monitor took that whole second each
    time we timed it, so it gets its SIGKILL now. Sending SIGTERM to all at once is not
    safe: the raylet, with the GCS already gone, left its agents running for up to a
    minute."""
    global _starter
    starter, _starter = _starter, None
    if starter is not None:
        starter.done.wait()  # a start under way is finished first: Ray cannot stop midway
    fast_start.settle_dashboard()
    try:
        _stop_private_ray()
    finally:
        fast_start.release_dashboard()
        if starter is not None:
            starter.released.set()
        _stop_watcher()


def _stop_watcher() -> None:
    global _watcher
    watcher, _watcher = _watcher, None
    if watcher is not None:
        reaper.stop(watcher)


def _stop_private_ray() -> None:
    global _started_here
    if not _started_here:
        return
    _started_here = False
    fast_start.kill_monitor()
    ray.shutdown()
