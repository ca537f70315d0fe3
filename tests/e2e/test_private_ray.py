"""Tier 4: the private Ray that a run starts for itself on one machine (cluster/session.py's
connect(), as `python -m jobs.train` and `widevalley.fit` call it).

While it lives, every one of its processes listens on loopback only (GCS, raylet,
workers and the dashboard agent listened on every interface); and a driver killed with
SIGKILL takes all of them with it within seconds (the raylet's two agents were alive a
minute later): cluster/session.py and cluster/reaper.py. And with WV_PLAIN_RAY=1 (none of
Ray's private API) a run computes the same center.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import load_config

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


def listening(processes: list[psutil.Process]) -> set[tuple[str, str]]:
    """(process name, address) of every TCP socket these processes listen on."""
    found = set()
    for process in processes:
        try:
            for socket in process.net_connections(kind="tcp"):
                if socket.status == psutil.CONN_LISTEN:
                    found.add((process.name(), socket.laddr.ip))
        except psutil.NoSuchProcess:
            continue
    return found


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
        sockets = listening([driver, *ray_processes])
        assert {"gcs_server", "raylet", "ray::DashboardAgent"} <= {name for name, _ in sockets}
        assert {(n, ip) for n, ip in sockets if ip not in LOOPBACK} == set(), sockets
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    _, alive = psutil.wait_procs(ray_processes, timeout=5)
    assert [names[p.pid] for p in alive] == []


def test_plain_ray_init_and_shutdown_give_the_same_center(tmp_path: Path) -> None:
    """WV_PLAIN_RAY=1 (cluster/ray_private.py): none of Ray's private API, the private Ray
    started and stopped as Ray does it; the run computes what the in-process run does."""
    sets = [f"run.storage={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
            "train.rounds=4", "train.eval_every=4"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "WV_PLAIN_RAY": "1", "WV_DASHBOARD": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
         *[arg for item in sets for arg in ("--set", item)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    sets[0] = f"run.storage={tmp_path / 'here'}"
    coordinator = Coordinator(load_config(REPO / "jobs/configs/smoke.toml", sets), LocalGroup)
    while not coordinator.done:
        coordinator.step()
    assert summary["center_sha256"] == coordinator.finish()["center_sha256"]
    coordinator.shutdown()
