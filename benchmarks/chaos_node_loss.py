"""Chaos: a real node is killed at a seeded moment of a submitted run, many times over.

One local multi-node cluster (a head with 1 CPU and two worker nodes with 2 CPUs each,
every node its own `ray start` raylet on this machine). Each try adds a victim worker
node (2 CPUs), submits a 4-replica spread run with `ray job submit`
(resources.placement = spread, cpus_per_replica = 0.5, replicas_per_actor = 1: one
replica on every node), waits until a replica actor's process runs on the victim (its
constructor, or after), sleeps a seeded delay (uniform in [0, --max-delay] s) and
SIGKILLs every process of the victim node at once (its raylet among them), as when a
machine dies. The job must end SUCCEEDED with the loss in its events.jsonl.

The phase of each kill is read from the run's own events: "starting" (before its `start`
event: the replica group was still starting), "training" (between `start` and
`finish`), or "after the end" (the run had finished: the kill tested nothing).

    python benchmarks/chaos_node_loss.py [--tries 8] [--seed 0] [--max-delay 6]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _timing import header  # noqa: E402

from tests.support import (  # noqa: E402
    LocalCluster,
    extra_node,
    local_cluster,
    replica_title_on,
    run_ray_cli,
    stop_session,
)

RUN = ["algorithm.replicas=4", "resources.placement=spread", "resources.cpus_per_replica=0.5",
       "resources.replicas_per_actor=1", "train.checkpoint_every=50",
       "train.eval_every=50"]  # fmt: skip


def submit(cluster: LocalCluster, storage: Path, data: Path, rounds: int) -> str:
    sets = [*RUN, f"run.storage={storage}", f"data.root={data}", f"train.rounds={rounds}"]
    done = run_ray_cli(
        "job", "submit", f"--address={cluster.dashboard}", "--no-wait", f"--working-dir={REPO}",
        "--", "python", "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
        *[a for s in sets for a in ("--set", s)], env=cluster.env,
    )  # fmt: skip
    text = done.stdout + done.stderr
    found = [w for w in text.replace("'", " ").split() if w.startswith("raysubmit_")]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"submission failed: {text[-2000:]}")
    return found[0]


def events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def phase_of(kill: float, seen: list[dict[str, Any]]) -> str:
    times = {e["event"]: float(e["time"]) for e in seen}
    if "start" in times and kill < times["start"]:
        return "starting"
    if "finish" in times and kill >= times["finish"]:
        return "after the end"
    return "starting" if "start" not in times else "training"


def one_try(cluster: LocalCluster, temp: Path, n: int, delay: float, rounds: int) -> dict[str, Any]:
    storage = temp / f"try-{n}"
    with extra_node(cluster) as victim:
        job = submit(cluster, storage, temp / "data", rounds)
        deadline = time.monotonic() + 180
        while not (title := replica_title_on(victim)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"try {n}: no replica was placed on the victim node")
            time.sleep(0.05)
        time.sleep(delay)
        killed_at = time.time()
        stop_session(victim, signals=(signal.SIGKILL,))
    run_ray_cli("job", "logs", "--follow", f"--address={cluster.dashboard}", job,
                env=cluster.env, timeout=600)  # fmt: skip
    status = run_ray_cli("job", "status", f"--address={cluster.dashboard}", job, env=cluster.env)
    text = status.stdout + status.stderr
    words = {"succeeded": "SUCCEEDED", "failed": "FAILED", "stopped": "STOPPED"}
    outcome = next((v for k, v in words.items() if f"' {k}" in text), "UNKNOWN")
    seen = events(storage / "smoke")
    restarts = [e for e in seen if e["event"] == "replica_restarted"]
    start = next((float(e["time"]) for e in seen if e["event"] == "start"), None)
    return {
        "try": n, "delay_s": round(delay, 2), "seen": title,
        "phase": phase_of(killed_at, seen), "outcome": outcome, "restarts": len(restarts),
        "restart_rounds": sorted({int(e["round"]) for e in restarts}),
        "finished": any(e["event"] == "finish" for e in seen),
        "kill_to_start_s": None if start is None else round(start - killed_at, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    header("Chaos: a worker node SIGKILLed at a seeded moment of a submitted run", vars(args))
    draws = random.Random(args.seed)
    temp = Path(tempfile.mkdtemp(prefix="chaos"))
    results = []
    try:
        with local_cluster(temp, head_cpus=1, worker_cpus=(2, 2)) as cluster:
            for n in range(args.tries):
                result = one_try(cluster, temp, n, draws.uniform(0, args.max_delay), args.rounds)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    tally = Counter((r["phase"], r["outcome"]) for r in results)
    print(f"\n{len(results)} tries (seed {args.seed}, delays in [0, {args.max_delay:g}] s):")
    for (phase, outcome), count in sorted(tally.items()):
        print(f"  {phase:<14} {outcome:<10} {count}")
    lost = sum(1 for r in results if r["restarts"] and r["phase"] != "after the end")
    print(f"  the loss in events.jsonl: {lost} of {len(results)}")


if __name__ == "__main__":
    main()
