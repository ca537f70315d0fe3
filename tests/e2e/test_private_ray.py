"""Tier 4: the private Ray that a run starts for itself on one machine (cluster/session.py's
connect(), as `python -m jobs.train` and `widevalley.fit` call it).

While it lives, every one of its processes listens on loopback only (GCS, raylet,
workers and the dashboard agent listened on every interface); and a driver killed with
SIGKILL takes all of them with it within 5 s (the raylet's two agents were left over):
cluster/session.py and cluster/reaper.py. (WV_PLAIN_RAY=1, a private Ray
without Ray's private API, is run by tests/e2e/test_polite_stop.py's SIGTERM test.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import listening

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# A driver that starts its private Ray with a dashboard and one actor, then waits.
DRIVER = """
import os, time
import ray
from cluster import session
session.connect(num_cpus=1)
worker = ray.remote(num_cpus=1)(type("Worker", (), {"pid": lambda self: os.getpid()}))
ray.get(worker.remote().pid.remote())
print("ready", flush=True)
time.sleep(600)
"""


def test_a_private_ray_listens_on_loopback_only_and_dies_with_its_driver() -> None:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # private, whatever else runs here
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr
        driver = psutil.Process(proc.pid)
        ray_processes = driver.children(recursive=True)
        names = {p.pid: p.name() for p in ray_processes}
        sockets = listening([driver.pid, *(p.pid for p in ray_processes)])
        assert {"gcs_server", "raylet", "ray::DashboardAgent"} <= {name for name, _ in sockets}
        assert {(n, ip) for n, ip in sockets if ip not in LOOPBACK} == set(), sockets
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    _, alive = psutil.wait_procs(ray_processes, timeout=5)
    assert [names[p.pid] for p in alive] == []
