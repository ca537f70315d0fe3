"""The private local Ray's dashboard, started once the run is training.

Ray starts a head's dashboard before its raylet, and waits until the dashboard has
loaded all of its modules (up to a minute) before it starts the raylet. Nothing a run
needs goes through the dashboard, which is only for watching. On the 2-core box that
wait, and the CPU the dashboard's processes took from the rest of the start, were a
large share of the time to the first round. So on the
private Ray that this process starts (cluster/session.py), Ray's call that starts the
dashboard is recorded instead of made (`deferred`), and made later: by a run once it
is training, at the lowest CPU priority (`start`); by the other commands right after
`ray.init`, at Ray's (`wait_until_up`). The dashboard is then the one Ray would have
started, with the same settings. A cluster this process only attaches to keeps its
dashboard as it is.

The thread that starts the dashboard lives until `release`: Ray ties the dashboard
process to it with a parent-death signal, as it does the processes started in ray.init
(session.py's _Starter says the same).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from cluster import ray_private


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
            ray_private.start_dashboard(self.node, self.include_dashboard)
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
def deferred() -> Iterator[None]:
    """Around ray.init of the private local Ray: its dashboard is recorded, not started
    (with WV_PLAIN_RAY=1, ray.init starts it: cluster/ray_private.py)."""

    def record(node: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        global _pending
        _pending = _Deferred(node, include_dashboard)

    with ray_private.dashboard_deferred(record):
        yield


def start() -> None:
    """Start the recorded dashboard on its own thread, if there is one (no wait), at the
    lowest priority: for a run that is training."""
    if _pending is not None:
        _pending.start(idle=True)


def wait_until_up() -> str | None:
    """Start the recorded dashboard if need be, at Ray's priority (for the commands
    that want it before they start their work: a sweep's trials are watched there), and
    wait for it; its URL, if it has one."""
    if _pending is None:
        return None
    _pending.start(idle=False)
    _pending.up.wait()
    return url()


def url() -> str | None:
    """The dashboard's address once it is up (None before, or without one)."""
    if _pending is None or not _pending.up.is_set() or not _pending.full:
        return None
    found = _pending.node.webui_url
    return f"http://{found}" if found else None


def url_to_come() -> bool:
    """Whether a dashboard to watch is recorded and not up yet."""
    return _pending is not None and _pending.full and not _pending.up.is_set()


def news() -> list[str]:
    """The one line to say once the started dashboard is up: its address, or that it did
    not start (the run goes on). Empty before that, after it, and without a dashboard."""
    pending = _pending
    if pending is None or pending.said or not pending.up.is_set():
        return []
    pending.said = True
    if not pending.full:
        return []  # WV_DASHBOARD=0: Ray's minimal head, nothing to watch
    address = url()
    if address is None:
        why = f" ({pending.error})" if pending.error is not None else ""
        return [f"wv: the Ray dashboard did not start{why}; the run goes on without it"]
    return [f"wv: Ray dashboard {address}"]


def settle() -> None:
    """Before Ray stops: a dashboard still starting is let finish (Ray bounds that), so
    that Ray's shutdown finds it among its processes and stops it too."""
    if _pending is not None and _pending.thread is not None:
        _pending.up.wait()


def release() -> None:
    """After Ray stopped: end the thread that started the dashboard; forget it."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending.released.set()
