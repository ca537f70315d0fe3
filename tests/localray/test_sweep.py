"""Tier 3: sweeps as Ray Tune trials on the local Ray (2 CPUs), and W&B kept offline.

Each sweep here is the smoke run cut down (2 replicas, K = 10, a dozen rounds): a trial
reserves 0.5 CPU for its coordinator and 0.25 per replica, so two run at once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from foundation.config import load_config
from jobs.sweep import command as sweep_job

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

SMALL = """
base = "{config_dir}/smoke.toml"
[run]
storage = "{storage}"
[data]
root = "{data}"
[algorithm]
replicas = 2
[train]
rounds = {rounds}
eval_every = 3
[resources]
cpus_per_replica = 0.25
[sweep]
name = "{name}"
coordinator_cpus = 0.5
{sweep}
[sweep.space]
{space}
"""


def write_sweep(tmp_path: Path, data_root: Path, name: str, sweep: str, space: str,
                rounds: int = 12) -> Path:  # fmt: skip
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL.format(
        config_dir=REPO / "jobs" / "configs", storage=tmp_path / "sweeps", data=data_root,
        rounds=rounds, name=name, sweep=sweep, space=space,
    ))  # fmt: skip
    return path


def trials(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    table = pq.read_table(tmp_path / "sweeps" / name / "trials.parquet")
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def test_asha_sweep_of_four_trials_stops_the_bad_one_early(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The grid runs in order, two at a time: when the 1e-4 trial reports its first rung
    # (round 3) the good ones have long passed it, and it is far below their median.
    path = write_sweep(tmp_path, data_root, "asha", 'scheduler = "asha"\n[sweep.asha]\n'
                       "grace_period = 3\nreduction_factor = 2",
                       '"algorithm.lr" = {grid = [0.2, 0.1, 0.05, 0.0001]}')  # fmt: skip
    started = time.time()
    assert sweep_job.main(["--config", str(path)]) == 0
    assert time.time() - started < 180

    rows = {r["algorithm.lr"]: r for r in trials(tmp_path, "asha")}
    assert sorted(rows) == [0.0001, 0.05, 0.1, 0.2]
    bad = rows[0.0001]
    assert bad["status"] == "stopped early", bad
    assert bad["round"] < 12 and bad["reports"] < 4
    finished = [r for r in rows.values() if r["status"] == "finished"]
    assert finished and all(r["round"] == 12 and r["reports"] == 4 for r in finished)
    # Every trial is an ordinary run directory: the finished ones have their summary.
    for r in finished:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["rounds"] == 12 and summary["replicas"] == 2
        assert summary["center_test_accuracy"] == pytest.approx(r["center_test_accuracy"])
    assert not (Path(bad["run_dir"]) / "summary.json").exists()

    sweep_dir = tmp_path / "sweeps" / "asha"
    best = load_config(sweep_dir / "best.toml")  # ready for jobs.train
    top = max(finished, key=lambda r: r["center_test_accuracy"])
    assert best.algorithm.lr == top["algorithm.lr"] and best.run.name == "asha-best"
    assert best.train.rounds == 12 and best.algorithm.replicas == 2
    assert (sweep_dir / "plots" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "stopped early" in out and f"best: {top['trial']}" in out
    assert "each trial reserves {CPU: 0.5} for its coordinator + 2 × {CPU: 0.25}" in out


def test_pbt_takes_over_a_better_trials_run_checkpoint_and_logs_to_wandb_offline(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Synchronous PBT: both trials wait for each other at round 6 and the worse one
    # (η = 1e-4) takes over the better one's checkpoint, whatever their relative speed.
    monkeypatch.setenv("WANDB_MODE", "offline")  # even where a W&B key is configured
    path = write_sweep(tmp_path, data_root, "pbt", 'scheduler = "pbt"\n[sweep.pbt]\n'
                       "perturbation_interval = 6\nquantile_fraction = 0.5\nsynch = true",
                       '"algorithm.lr" = {grid = [0.1, 0.0001]}')  # fmt: skip
    path.write_text(path.read_text().replace("[resources]", "[logging]\nwandb = true\n[resources]"))
    assert sweep_job.main(["--config", str(path)]) == 0

    rows = trials(tmp_path, "pbt")
    assert len(rows) == 2 and all(r["round"] == 12 for r in rows)
    taken = [r for r in rows if r["restored_from"]]
    assert taken, rows
    thief = taken[0]
    donor = next(r for r in rows if r["trial"] == thief["restored_from"])
    assert thief["exploits"] >= 1
    events = [json.loads(line) for line in (Path(thief["run_dir"]) / "events.jsonl").open()]
    exploits = [e for e in events if e["event"] == "pbt_exploit"]
    assert len(exploits) == thief["exploits"] and exploits[-1]["donor"] == donor["trial"]
    # The Coordinator went on from the donor's checkpoint, at that round.
    last = exploits[-1]
    assert last["round"] % 3 == 0 and last["round"] == thief["restored_round"]
    after = events[events.index(last) + 1 :]
    assert {"event": "resume", "round": last["round"]}.items() <= after[0].items()
    metrics = pq.read_table(Path(thief["run_dir"]) / "metrics.parquet").to_pylist()
    assert sorted({m["round"] for m in metrics}) == list(range(1, 13))
    assert load_config(Path(thief["run_dir"]) / "config.toml").algorithm.lr == thief["algorithm.lr"]
    # One offline W&B run per trial start, written beside its run directory.
    for r in rows:
        assert list((Path(r["run_dir"]) / "wandb").glob("offline-run-*")), r["run_dir"]


class Listener:
    """A TCP server on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[bytes] = []
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.connections.append(conn.recv(200))
            except OSError:
                self.connections.append(b"")
            conn.close()

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


def test_wandb_without_a_key_runs_offline_and_makes_no_network_call(
    tmp_path: Path, data_root: Path
) -> None:
    """A whole jobs.train run with logging.wandb = true and no W&B key: every proxy-aware
    client (wandb's Python side, wandb-core in Go) would reach the proxy listener for any
    outside host, and W&B's own server URL is the other listener. The run attaches to this
    session's Ray, which has no dashboard: a dashboard probes the cloud metadata endpoints
    (169.254.169.254, metadata.google.internal) at start, W&B or not."""
    import ray

    proxy, server = Listener(), Listener()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "NETRC": str(tmp_path / "no-netrc"),  # no `wandb login` key either
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}", "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
        "http_proxy": f"http://127.0.0.1:{proxy.port}", "https_proxy": f"http://127.0.0.1:{proxy.port}",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "WANDB_BASE_URL": f"http://127.0.0.1:{server.port}", "RAY_USAGE_STATS_ENABLED": "0",
    })  # fmt: skip
    storage = tmp_path / "runs"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
             "--set", f"run.storage={storage}", "--set", f"data.root={data_root}",
             "--set", "train.rounds=4", "--set", "train.eval_every=2",
             "--set", "logging.wandb=true"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=240, check=False,
        )  # fmt: skip
        time.sleep(1)  # anything still on its way
    finally:
        proxy.close()
        server.close()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "wv: W&B offline" in output and "W&B is off" not in output
    runs = list((storage / "smoke" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), output
    assert proxy.connections == [], proxy.connections
    assert server.connections == [], server.connections
