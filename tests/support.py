"""Helpers the test tiers share: the typed config factory, the ray CLI, stopping a
cluster's own processes. Importable as `tests.support` (pytest's pythonpath is the repo).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from foundation.config import Config

ConfigFactory = Callable[..., Config]
"""make_config(*overrides, name=...) -> a validated Config on a small budget."""

BIN = Path(sys.executable).parent
RayCli = Callable[..., subprocess.CompletedProcess[str]]


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this process: the kernel may give a
    just-released port again, and `ray start` refuses two components on one port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def run_ray_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_ports() -> list[str]:
    """Free ports for every listener a node opens: the defaults (10001 for the client
    server, 52365 for the agent, …) would collide with another node on this machine."""
    names = ("node-manager-port", "object-manager-port", "metrics-export-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port")  # fmt: skip
    return [f"--{name}={free_port()}" for name in names]


def wait_for_job_agent(address: str, env: dict[str, str], timeout_s: float = 120) -> None:
    """Submit a no-op job until the head's job agent takes it: right after `ray start`
    the dashboard answers "No available agent to submit job" for a while."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = run_ray_cli(
            "job", "submit", f"--address={address}", "--no-wait", "--",
            "python", "-c", "pass", env=env, timeout=60,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        if "No available agent" not in probe.stdout + probe.stderr or time.monotonic() > deadline:
            raise RuntimeError(f"the job agent at {address} is not ready: {probe.stderr[-500:]}")
        time.sleep(1)


def ray_start(*args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """`ray start ARGS` in a session of its own; returns (that session's id, its output).

    Every process the node starts (GCS, raylet, dashboard, agents, workers) inherits the
    session, also the ones that rename themselves (ray::DashboardAgent) and those whose
    command line names no temp dir, so stop_session() finds them all and nothing else.
    """
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", *args], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        stop_session(proc.pid)
        raise RuntimeError(f"ray start {' '.join(args)} failed: {output}")
    # `ray start` has exited; its pid is the id of the session its daemons keep.
    return proc.pid, output


def session_processes(sid: int) -> list[int]:
    """The pids whose session id is `sid` (fields after the command name in /proc/pid/stat)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            pids.append(int(entry.name))
    return pids


def stop_session(
    sid: int, grace_s: float = 3.0, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)
) -> None:
    """Stop every process of one `ray start` session: SIGTERM, then SIGKILL what is left
    (signals=(SIGKILL,): a node lost at once, as when its machine dies).
    `ray stop` is never used here: it stops every Ray process on the machine."""
    for sig in signals:
        for pid in session_processes(sid):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


def raylet_node_id(sid: int) -> str:
    """The node id of the raylet among a `ray start` session's processes ("" if none)."""
    for pid in session_processes(sid):
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"raylet"):
            for arg in args:
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
    return ""


@dataclass
class LocalCluster:
    """A multi-node Ray cluster on this machine: one `ray start` raylet per node."""

    gcs: str  # host:port, for ray.init(address=…)
    dashboard: str  # the job API's URL
    env: dict[str, str]  # what the CLI and a driver need (token auth)
    head_sid: int
    workers: list[int]  # `ray start` session ids, one per worker node


@contextlib.contextmanager
def local_cluster(
    temp: Path, head_cpus: int = 1, worker_cpus: tuple[int, ...] = (2, 2),
    store_bytes: int = 100_000_000,
) -> Iterator[LocalCluster]:  # fmt: skip
    """A head and worker nodes, token auth as `ray start --head` does by default, each node
    its own --num-cpus, a small --object-store-memory and its own temp dir (as each machine
    has its own disk; Ray would otherwise share one runtime-env cache between nodes and a
    node's cleanup would delete the others' working dirs). Stopped by the processes of
    its own `ray start` sessions, never `ray stop` (every Ray process on the machine)."""
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}  # fmt: skip
    for key in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        env.pop(key, None)
    # A node whose raylet is gone (SIGKILLed) refuses the GCS's health check at once: three
    # refusals a second apart mark it dead, where Ray's default (five, three seconds apart)
    # keeps a lost node's placement-group bundles waiting a quarter of a minute. A live but
    # busy raylet still has the default 10 s per check to answer, so none is marked dead
    # by mistake on a loaded machine.
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    gcs, dashboard, store = free_port(), free_port(), f"--object-store-memory={store_bytes}"
    sids: list[int] = []
    node_dirs: list[Path] = []
    try:
        sids.append(ray_start(
            "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--num-cpus={head_cpus}",
            store, f"--ray-client-server-port={free_port()}", *node_ports(), f"--temp-dir={temp}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            "--disable-usage-stats", env=env,
        )[0])  # fmt: skip
        for n, cpus in enumerate(worker_cpus):
            node_dirs.append(Path(tempfile.mkdtemp(prefix=f"wv{n}", dir="/tmp")))  # short paths
            sids.append(ray_start(
                f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                store, *node_ports(), f"--temp-dir={node_dirs[-1]}", "--disable-usage-stats",
                env=env,
            )[0])  # fmt: skip
        address = f"http://127.0.0.1:{dashboard}"
        wait_for_job_agent(address, env)
        yield LocalCluster(f"127.0.0.1:{gcs}", address, env, sids[0], sids[1:])
    finally:
        for sid in reversed(sids):
            stop_session(sid)
        for path in node_dirs:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def extra_node(cluster: LocalCluster, cpus: int = 2) -> Iterator[int]:
    """One more worker node (a raylet of its own, its own short temp dir: Ray's socket
    paths must fit in 107 bytes) in `cluster`; yields its `ray start` session id
    (stop_session() loses the node); stopped, if still alive, and removed afterwards."""
    node_dir = Path(tempfile.mkdtemp(prefix="wvx", dir="/tmp"))
    try:
        sid, _ = ray_start(
            f"--address={cluster.gcs}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
            "--object-store-memory=100000000", *node_ports(), f"--temp-dir={node_dir}",
            "--disable-usage-stats", env=cluster.env,
        )  # fmt: skip
        try:
            yield sid
        finally:
            stop_session(sid)
    finally:
        shutil.rmtree(node_dir, ignore_errors=True)


def replica_title_on(sid: int) -> str:
    """The process title of a replica actor among the processes of one `ray start`
    session ("" if none yet). Ray names an actor's worker `ray::Replica.__init__` while its
    constructor runs and `ray::Replica` after: read from /proc, so a test can act within
    the moment (`ray list actors` takes a second and shows a node only once ALIVE)."""
    for pid in session_processes(sid):
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith((b"ray::Replica", b"ray::PackedReplicas")):
            return title.decode(errors="replace").strip()
    return ""


def listening(pids: list[int]) -> set[tuple[str, str]]:
    """(process name, address) of every TCP socket these processes listen on (psutil;
    a process that ended meanwhile is skipped)."""
    import psutil

    found = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for sock in process.net_connections(kind="tcp"):
                if sock.status == psutil.CONN_LISTEN:
                    found.add((process.name(), sock.laddr.ip))
        except psutil.Error:
            continue
    return found
