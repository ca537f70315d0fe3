"""Attach to a Ray cluster or start a local one."""

from __future__ import annotations

import os

import ray


def connect(num_cpus: int | None = None) -> str:
    """Attach to the cluster in RAY_ADDRESS (set by `ray job submit`) or start a local one.

    Returns a short description for the progress output. A local cluster's dashboard
    binds to 127.0.0.1: nothing is exposed beyond this machine unless asked.
    """
    if ray.is_initialized():
        return "an already initialized Ray session"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return f"the Ray cluster at {address}"
    ray.init(num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1")
    return f"a local Ray with {int(ray.cluster_resources().get('CPU', 0))} CPUs"
