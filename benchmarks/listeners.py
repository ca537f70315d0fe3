"""Which addresses Ray's processes listen on: the private Ray of a run, and cluster heads.

Starts, one after another on this machine, and lists every TCP listening socket of each
one's processes (psutil), grouped by process and by the kind of address:
1. the private Ray that `python -m jobs.train` and `widevalley.fit` start
   (cluster/session.py's connect(), with its dashboard and one actor);
2. a head as `ray start --head` starts it by default;
3. a head started with `ray start --head --node-ip-address=127.0.0.1`.
Each head runs in a session of its own with its own temp dir and is stopped by its own
processes, never `ray stop` (which stops every Ray process on the machine).

    python benchmarks/listeners.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _timing import header  # noqa: E402

from tests.support import (  # noqa: E402
    BIN,
    free_port,
    listening,
    node_ports,
    ray_start,
    session_processes,
    stop_session,
)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
EVERY_INTERFACE = {"0.0.0.0", "::"}
PRIVATE_DRIVER = """
import os, time
import ray
from cluster import session
session.connect(num_cpus=1)
worker = ray.remote(num_cpus=1)(type("Worker", (), {"pid": lambda self: os.getpid()}))
ray.get(worker.remote().pid.remote())
time.sleep(2)  # the worker's own server
print("ready", flush=True)
time.sleep(600)
"""


def kind_of(ip: str) -> str:
    if ip in LOOPBACK:
        return "loopback"
    return "every interface" if ip in EVERY_INTERFACE else f"this node's address ({ip})"


def listeners(pids: list[int]) -> dict[str, set[str]]:
    """Process name -> the kinds of address it listens on."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, ip in listening(pids):
        found[name].add(kind_of(ip))
    return found


def report(title: str, found: dict[str, set[str]]) -> None:
    print(f"\n{title}")
    for name in sorted(found):
        print(f"  {name:<24} {', '.join(sorted(found[name]))}")


def private_ray() -> dict[str, set[str]]:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(
        [sys.executable, "-c", PRIVATE_DRIVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        driver = psutil.Process(proc.pid)
        return listeners([proc.pid, *(p.pid for p in driver.children(recursive=True))])
    finally:
        proc.kill()
        proc.wait()


def head(*extra: str) -> dict[str, set[str]]:
    with tempfile.TemporaryDirectory(prefix="wvh", dir="/tmp") as temp:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("RAY_ADDRESS", None)
        sid, _ = ray_start(
            "--head", f"--port={free_port()}", "--num-cpus=1", *node_ports(),
            f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
            f"--temp-dir={temp}", "--disable-usage-stats", *extra, env=env,
        )  # fmt: skip
        try:
            return listeners(session_processes(sid))
        finally:
            stop_session(sid)


def main() -> None:
    header("Listening sockets of Ray's processes", {})
    report("1. the private Ray of a run (cluster/session.py)", private_ray())
    report("2. ray start --head", head())
    report("3. ray start --head --node-ip-address=127.0.0.1", head("--node-ip-address=127.0.0.1"))


if __name__ == "__main__":
    main()
