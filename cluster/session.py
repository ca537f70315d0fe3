"""Attach to a Ray cluster or start a local one."""

from __future__ import annotations

import logging
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
    # Ray's own start-up chatter goes to stderr; keep it for errors so that our one-line
    # messages stay the only line a user sees, and say where the dashboard is ourselves.
    context = ray.init(
        num_cpus=num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", logging_level=logging.ERROR
    )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    dashboard = f", dashboard http://{context.dashboard_url}" if context.dashboard_url else ""
    return f"a local Ray with {cpus} CPUs{dashboard}"
