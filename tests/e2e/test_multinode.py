"""Tier 4: a real multi-node Ray cluster on this machine — a head and two worker nodes,
each `ray start` a raylet of its own — runs, sweeps and jobs on it, and a lost node.

The nodes use token auth as `ray start --head` does by default, each its own --num-cpus
and a small --object-store-memory, free ports for every listener, and are stopped by the
processes of their own `ray start` sessions (never `ray stop`, which would stop every
Ray process on the machine).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from foundation.config import load_config
from tests.support import (
    LocalCluster,
    RayCli,
    extra_node,
    local_cluster,
    raylet_node_id,
    replica_title_on,
    stop_session,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    import ray

    if ray.is_initialized():  # the local-Ray tier's session shares our two cores
        ray.shutdown()
    temp = tmp_path_factory.mktemp("ray")
    with local_cluster(temp, head_cpus=1, worker_cpus=(2, 2)) as nodes:
        yield nodes
    shutil.rmtree(temp, ignore_errors=True)


def submit(cluster: LocalCluster, ray_cli: RayCli, *entrypoint: str) -> str:
    done = ray_cli("job", "submit", f"--address={cluster.dashboard}", "--no-wait",
                   f"--working-dir={REPO}", "--", *entrypoint, env=cluster.env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = re.search(r"raysubmit_\w+", done.stdout + done.stderr)  # the CLI colours its output
    assert job is not None, done.stdout + done.stderr
    return job.group(0)


def events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def wait_for_event(run_dir: Path, kind: str, timeout: float) -> None:
    """Poll the run's events.jsonl (a local file: no CLI round trip per look)."""
    deadline = time.monotonic() + timeout
    while not any(e["event"] == kind for e in events(run_dir)):
        assert time.monotonic() < deadline, f"no {kind} event within {timeout} s"
        time.sleep(0.2)


def test_a_submitted_sweep_runs_its_trials_as_tune_actors_on_the_cluster(
    cluster: LocalCluster, ray_cli: RayCli, tmp_path: Path, built_data_root: Path
) -> None:
    """First in this module, so that the actors listed below are the sweep's alone."""
    storage = tmp_path / "sweeps"
    submitted = ray_cli(
        "job", "submit", f"--address={cluster.dashboard}", f"--working-dir={REPO}",
        "--submission-id=wv-sweep-smoke", "--",
        "python", "-m", "jobs.sweep", "--config", "jobs/configs/sweep_smoke.toml",
        "--set", f"run.storage={storage}", "--set", f"data.root={built_data_root}",
        "--set", "train.rounds=6",
        env=cluster.env,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output
    assert "on the Ray cluster at" in output and "4 trials in" in output, output
    assert "Job 'wv-sweep-smoke' succeeded" in output, output

    sweep_dir = storage / "sweep-smoke"
    rows = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    assert {(r["scoping.gamma0"], r["scoping.kind"]) for r in rows} == {
        (g, k) for g in (0.001, 0.1) for k in ("exponential", "cosine")
    }
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["replicas"] == 2
    assert load_config(sweep_dir / "best.toml").train.rounds == 6
    assert (sweep_dir / "plots" / "sweep.png").stat().st_size > 10_000

    # What the dashboard shows: the trials as Tune actors (ImplicitFunc) beside the
    # replica actors each trial started in its placement group.
    listed = ray_cli("list", "actors", f"--address={cluster.dashboard}", "--format=json",
                     "--limit=200", "--detail", env=cluster.env)  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    classes = [a["class_name"] for a in json.loads(listed.stdout)]
    assert classes.count("ImplicitFunc") == 4, classes
    assert classes.count("Replica") == 8, classes


def test_a_spread_run_survives_losing_a_node_while_starting_and_another_mid_run(
    cluster: LocalCluster, ray_cli: RayCli, tmp_path: Path, built_data_root: Path
) -> None:
    """Two of the operator's reports in one job (one submission: e2e time is the suite's
    scarcest). 4 replicas spread over the nodes, one replica per node:
    - a node of its own joins and is SIGKILLed while its replica's constructor runs (a
      node lost while the group started ended the job: ActorDiedError, "The actor never
      ran"); its replica starts again elsewhere, logged at round 0, before `start`;
    - once the first checkpoint is written, SIGKILL of a worker node's raylet and all of
      that node: its replicas restart on the others from the center, events.jsonl
      naming the node.
    The job ends SUCCEEDED with every round."""
    # The node is lost right after the first checkpoint: the rounds after it are margin
    # for the loss to be noticed and its replicas restarted well before the end.
    storage, rounds = tmp_path / "runs", 200
    run_dir = storage / "smoke"
    sets = [f"run.storage={storage}", f"data.root={built_data_root}", "algorithm.replicas=4",
            "resources.placement=spread", "resources.cpus_per_replica=0.5",
            "resources.replicas_per_actor=1",  # one replica per actor, spread over the nodes
            f"train.rounds={rounds}", "train.checkpoint_every=25",
            "train.eval_every=100"]  # fmt: skip
    with extra_node(cluster) as starting:
        args = [a for s in sets for a in ("--set", s)]
        job = submit(cluster, ray_cli, "python", "-m", "jobs.train", "--config",
                     "jobs/configs/smoke.toml", *args)  # fmt: skip
        deadline = time.monotonic() + 180
        while not (title := replica_title_on(starting)):
            assert time.monotonic() < deadline, "no replica was placed on the new node"
            time.sleep(0.05)
        killed_at = time.time()
        stop_session(starting, signals=(signal.SIGKILL,))
    wait_for_event(run_dir, "checkpoint", timeout=240)
    victim = cluster.workers[0]
    lost_node = raylet_node_id(victim)
    stop_session(victim, signals=(signal.SIGKILL,))  # the raylet and all of the node at once
    assert not any(e["event"] == "finish" for e in events(run_dir)), "ended before the kill"
    logs = ray_cli("job", "logs", "--follow", f"--address={cluster.dashboard}", job,
                   env=cluster.env, timeout=400)  # fmt: skip
    status = ray_cli("job", "status", f"--address={cluster.dashboard}", job, env=cluster.env)
    output = logs.stdout + logs.stderr
    assert f"Job '{job}' succeeded" in status.stdout + status.stderr, output + status.stdout
    seen = events(run_dir)
    start = next(float(e["time"]) for e in seen if e["event"] == "start")
    assert killed_at < start, f"killed after the start ({title}): no start-up was tested"
    restarts = [e for e in seen if e["event"] == "replica_restarted"]
    at_start = [e for e in restarts if e["round"] == 0]
    assert len(at_start) == 1 and at_start[0]["reason"].startswith("lost while starting")
    later = [e for e in restarts if e["round"] > 0]
    assert later and all(e["node"] == lost_node and e["now_on"] != lost_node for e in later)
    # The node's replicas, and only those, were lost and restarted elsewhere (the reason
    # says "its node … was lost" once Ray has marked the node dead, else "actor died").
    assert all(e["reason"].startswith("lost: ") for e in later), later
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == rounds and "center_sha256" in output
