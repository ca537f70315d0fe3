"""Every use of Ray's private API (`ray._private`), in one module: why Ray is pinned.

The private local Ray that a run starts for itself starts faster, stops faster and
listens on loopback only because of four calls into Ray's internals:
- which cluster `ray start` left running on this machine (Ray's own lookup);
- ray.init's choice of the node's address, turned to 127.0.0.1 (`on_loopback`);
- Ray's call that starts the dashboard, recorded during ray.init and made later
  (`dashboard_deferred`, `start_dashboard`: cluster/dashboard.py says why);
- the autoscaler monitor, killed at once when the private Ray stops (`kill_monitor`).

WV_PLAIN_RAY=1 turns all four off: the private Ray is then started and stopped with
plain `ray.init()`/`ray.shutdown()` and Ray's defaults (its dashboard started by
ray.init, every interface, a running `ray start` cluster found by ray.init itself),
for a Ray version whose internals moved. The numbers a run computes are the same
either way (the SIGTERM test of tests/e2e/test_polite_stop.py resumes on one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

PLAIN = os.environ.get("WV_PLAIN_RAY", "0") == "1"
"""Use none of Ray's private API (read once, at import)."""


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


@contextlib.contextmanager
def dashboard_deferred(record: Callable[..., None]) -> Iterator[None]:
    """Around ray.init: Ray's call that starts the dashboard (Node.start_api_server) goes
    to `record(node, include_dashboard=…, raise_on_failure=…)` instead of starting it."""
    if PLAIN:
        yield
        return
    from ray._private import node

    ray_start = node.Node.start_api_server
    node.Node.start_api_server = record  # type: ignore[method-assign]
    try:
        yield
    finally:
        node.Node.start_api_server = ray_start  # type: ignore[method-assign]


def start_dashboard(node: Any, include_dashboard: bool | None) -> None:
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
