"""The fast start of a private local Ray, behind one door, and the fast exit.

A run on this machine starts its own Ray. Four things make that start and its end
faster than plain `ray.init()`/`ray.shutdown()`, and keep it private:
- Ray starts on a thread (`Starter`, begun by jobs/train.py before torch is imported):
  much of Ray's start is waiting for its own processes, and the imports and the input
  checks go on meanwhile;
- the node takes 127.0.0.1, so every one of its servers listens on loopback only
  (`on_loopback`);
- Ray's call that starts the dashboard is recorded during ray.init and made later
  (`dashboard_deferred`): by a run once it is training, at the lowest CPU priority
  (`start_dashboard`), by the other commands right after ray.init (`wait_for_dashboard`);
- the autoscaler monitor is killed at once when the private Ray stops (`kill_monitor`),
  where ray.shutdown() would give it a whole second.
And a `python -m` command ends with `exit_now`: the exit handlers run and the output is
flushed, the interpreter's teardown of its modules is skipped.

Every use of Ray's private API (`ray._private`) is in this module: it is why Ray is
pinned to one version. WV_PLAIN_RAY=1 turns them all off: the private Ray is then
started and stopped with plain `ray.init()`/`ray.shutdown()` and Ray's defaults (its
dashboard started by ray.init, every interface, a running `ray start` cluster found by
ray.init itself), for a Ray version whose internals moved. The numbers a run computes
are the same either way (the SIGTERM test of tests/e2e/test_polite_stop.py resumes on
one). This module imports no Ray at import time: the commands read it before Ray.

Why the dashboard waits: Ray starts a head's dashboard before its raylet, and waits
until the dashboard has loaded all of its modules (up to a minute) before it starts the
raylet. Nothing a run needs goes through the dashboard, which is only for watching. On
the 2-core box that wait, and the CPU the dashboard's processes took from the rest of
the start, were a large share of the time to the first round. The dashboard started
later is the one Ray would have started, with the same settings; a cluster this process
only attaches to keeps its dashboard as it is.

The threads that start Ray and the dashboard live until their release: Ray ties the
processes it starts to the starting thread with a parent-death signal (Linux keeps it
per thread), so they would die with a thread that ended.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

PLAIN = os.environ.get("WV_PLAIN_RAY", "0") == "1"
"""Use none of Ray's private API (read once, at import)."""


# ---- Ray's start on a thread ---------------------------------------------------------


class Starter:
    """`start()` on a thread of its own; result() waits for it. The thread lives until
    `released` is set (see the module's docstring)."""

    def __init__(self, start: Callable[[], str]) -> None:
        self.start = start
        self.done, self.released = threading.Event(), threading.Event()
        self.where: str | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, name="wv-ray-start", daemon=True).start()

    def _run(self) -> None:
        try:
            self.where = self.start()
        except BaseException as err:  # handed to the caller that waits for it
            self.error = err
        finally:
            self.done.set()
        self.released.wait()

    def result(self) -> str:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.where is not None
        return self.where


# ---- Ray's private API ----------------------------------------------------------------


def running_cluster_address() -> str | None:
    """The address of a live cluster that `ray start` left on this machine, if any."""
    from ray._private import services

    address = services.find_bootstrap_address(None)
    if address is None or not services.find_gcs_addresses():
        return None  # no record, or a stale one whose GCS is gone
    return str(address)


@contextlib.contextmanager
def on_loopback() -> Iterator[None]:
    """Around ray.init of the private Ray: its node takes 127.0.0.1, so that every one of
    its servers listens on loopback only.

    Ray 2.60's gRPC servers (GCS, raylet, workers, agents) bind every interface unless
    the node's address is 127.0.0.1, and ray.init turns `_node_ip_address="127.0.0.1"`
    back into the routable address. What makes it choose 127.0.0.1 is the switch it reads
    on macOS and Windows, where a local Ray is loopback-only by default
    (ray_constants.ENABLE_RAY_CLUSTER); it is set back as soon as the node is up, so that
    a later attach to a real cluster registers this machine's routable address."""
    if PLAIN:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _ray_start_dashboard(node: Any, include_dashboard: bool | None) -> None:
    """Make the call that dashboard_deferred recorded: Ray's own start of the dashboard
    (raise_on_failure=False: a run goes on without one)."""
    from ray._private import node as ray_node

    ray_node.Node.start_api_server(
        node, include_dashboard=include_dashboard, raise_on_failure=False
    )


def kill_monitor() -> None:
    """Before ray.shutdown() of the private Ray: SIGKILL its autoscaler monitor, which
    ray.shutdown() would give a whole second to stop after SIGTERM."""
    if PLAIN:
        return
    from ray._private import ray_constants, worker

    node = worker._global_node
    if node is not None:
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            if info.process.poll() is None:
                info.process.kill()


# ---- the dashboard, started once the run is training -----------------------------------


class _Deferred:
    """Ray's postponed call to Node.start_api_server, and the thread that makes it."""

    def __init__(self, node: Any, include_dashboard: bool | None) -> None:
        self.node, self.include_dashboard = node, include_dashboard
        self.full = include_dashboard is not False  # None: Ray's default, the full one
        self.thread: threading.Thread | None = None
        self.up, self.released = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.said = False

    def start(self, idle: bool) -> None:
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, args=(idle,), name="wv-dashboard", daemon=True
            )
            self.thread.start()

    def _run(self, idle: bool) -> None:
        if idle:
            _lowest_priority()
        try:  # Ray's own call, which does not raise: a run goes on without a dashboard
            _ray_start_dashboard(self.node, self.include_dashboard)
        except BaseException as err:  # said by news(); the run goes on
            self.error = err
        finally:
            self.up.set()
        self.released.wait()


def _lowest_priority() -> None:
    """This thread, and so the processes it starts, at Linux's lowest priority,
    SCHED_IDLE (Linux keeps the policy per thread; a child takes its creator's): the
    dashboard then runs on what CPU the run leaves. On Ray's priority, or even at nice
    19, its start took cores from the replicas' two torch threads, and a step waits for
    the slower thread: whole runs of the default were slower. Where the run keeps every
    core busy, the dashboard comes up late, or not before a short run ends. Elsewhere
    than Linux: nice 19, if it can."""
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, thread, 19)


_pending: _Deferred | None = None


@contextlib.contextmanager
def dashboard_deferred() -> Iterator[None]:
    """Around ray.init of the private local Ray: Ray's call that starts the dashboard
    (Node.start_api_server) is recorded, not made (with WV_PLAIN_RAY=1, ray.init makes
    it)."""
    if PLAIN:
        yield
        return
    from ray._private import node

    def record(node: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        global _pending
        _pending = _Deferred(node, include_dashboard)

    ray_start = node.Node.start_api_server
    node.Node.start_api_server = record  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        node.Node.start_api_server = ray_start  # type: ignore[method-assign]


def start_dashboard() -> None:
    """Start the recorded dashboard on its own thread, if there is one (no wait), at the
    lowest priority: for a run that is training."""
    if _pending is not None:
        _pending.start(idle=True)


def wait_for_dashboard() -> str | None:
    """Start the recorded dashboard if need be, at Ray's priority (for the commands
    that want it before they start their work: a sweep's trials are watched there), and
    wait for it; its URL, if it has one."""
    if _pending is None:
        return None
    _pending.start(idle=False)
    _pending.up.wait()
    return dashboard_url()


def dashboard_url() -> str | None:
    """The dashboard's address once it is up (None before, or without one)."""
    if _pending is None or not _pending.up.is_set() or not _pending.full:
        return None
    found = _pending.node.webui_url
    return f"http://{found}" if found else None


def dashboard_to_come() -> bool:
    """Whether a dashboard to watch is recorded and not up yet."""
    return _pending is not None and _pending.full and not _pending.up.is_set()


def dashboard_news() -> list[str]:
    """The one line to say once the started dashboard is up: its address, or that it did
    not start (the run goes on). Empty before that, after it, and without a dashboard."""
    pending = _pending
    if pending is None or pending.said or not pending.up.is_set():
        return []
    pending.said = True
    if not pending.full:
        return []  # WV_DASHBOARD=0: Ray's minimal head, nothing to watch
    address = dashboard_url()
    if address is None:
        why = f" ({pending.error})" if pending.error is not None else ""
        return [f"wv: the Ray dashboard did not start{why}; the run goes on without it"]
    return [f"wv: Ray dashboard {address}"]


def settle_dashboard() -> None:
    """Before Ray stops: a dashboard still starting is let finish (Ray bounds that), so
    that Ray's shutdown finds it among its processes and stops it too."""
    if _pending is not None and _pending.thread is not None:
        _pending.up.wait()


def release_dashboard() -> None:
    """After Ray stopped: end the thread that started the dashboard; forget it."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending.released.set()


# ---- the exit -------------------------------------------------------------------------


def exit_now(code: int) -> NoReturn:
    """Exit with `code` as `sys.exit` would, less the interpreter's teardown of its modules.

    The exit handlers run (logging's, W&B's, those of imported user code) and the output
    is flushed; what is skipped is freeing the modules one by one, which after a run
    took longer than the rest of the exit on the 2-core box (torch's, gRPC's and Ray's
    libraries) and frees nothing the OS does not take back. For
    `python -m` entry points only: a function called in-process must return instead."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
