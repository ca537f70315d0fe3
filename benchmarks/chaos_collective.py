"""Chaos for the collective transport: SIGKILL of one replica process at a seeded moment.

Each try runs `python -m jobs.train` on its own private Ray with the smoke config,
3 replicas, one per actor (`resources.transport=collective`,
`resources.replicas_per_actor=1`, `train.round_timeout_s=20`, as the issue that found
the fault ran it), one local step on 8 examples a round and a wide MLP
(`algorithm.coupling_period=1`, `data.batch_size=8`, `algorithm.lr=0.01`;
benchmarks/wide.py, 1.1 M parameters at --hidden 1024 on MNIST-1D), so that the
all-reduce is most of a round and kills land in it; waits for
its first progress line, sleeps a seeded delay (uniform in [0, --max-delay] s) and
SIGKILLs the process of one replica, chosen by the seed. The run must end with exit 0
and the loss in its events.jsonl.

Where the kill landed is read from the run's own metrics: the lost replica's row of
that round has a training loss when its local steps were done ("all-reduce": it died
inside the all-reduce, or between the two phases), none when they were not ("local
steps": in them, or waiting for them).

    python benchmarks/chaos_collective.py [--tries 5] [--seed 0] [--max-delay 4] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _timing import header  # noqa: E402

RUN = ["algorithm.replicas=3", "algorithm.coupling_period=1", "data.batch_size=8",
       "algorithm.lr=0.01",
       "model.arch=benchmarks.wide:wide_mlp", "resources.transport=collective",
       "resources.replicas_per_actor=1", "resources.cpus_per_replica=0.5",
       "train.round_timeout_s=20", "train.eval_every=100"]  # fmt: skip


def replica_pids(driver: psutil.Process) -> list[int]:
    """The pids of the run's replica actors, by their process titles (ray::Replica)."""
    found = []
    for process in driver.children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::Replica"):
                found.append(process.pid)
        except psutil.Error:
            continue
    return sorted(found)


def one_try(
    storage: Path, data: Path, args: argparse.Namespace, delay: float, pick: random.Random
) -> dict[str, Any]:
    sets = [*RUN, f"run.storage={storage}", f"data.root={data}", f"train.rounds={args.rounds}",
            f"model.kwargs={{hidden = {args.hidden}}}"]  # fmt: skip
    command = [sys.executable, "-m", "jobs.train", "--config", "jobs/configs/smoke.toml",
               *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "WV_DASHBOARD": "0"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("round "):
            break
    time.sleep(delay)
    pids = replica_pids(psutil.Process(proc.pid))
    victim = pick.randrange(len(pids)) if pids else -1
    if pids:
        os.kill(pids[victim], signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    run = storage / "smoke"
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    restarts = [e for e in events if e["event"] == "replica_restarted"]
    phases = []
    if restarts:
        rows = pq.read_table(run / "metrics.parquet").to_pylist()
        for e in restarts:
            [row] = [r for r in rows if r["round"] == e["round"] and r["replica"] == e["replica"]]
            phases.append("local steps" if row["train_loss"] is None else "all-reduce")
    last = err.strip().splitlines()[-1:] if proc.returncode else []
    return {"exit": proc.returncode, "killed": bool(pids), "restarts": restarts,
            "phases": phases, "error": last}  # fmt: skip


def described(result: dict[str, Any]) -> str:
    lost = [f"round {e['round']} replica {e['replica']} ({phase})"
            for e, phase in zip(result["restarts"], result["phases"], strict=True)]  # fmt: skip
    error = f"; {result['error'][0]}" if result["error"] else ""
    return f"lost: {', '.join(lost) or 'none'}{error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    header("Chaos: SIGKILL of a replica process, collective transport", vars(args))
    rng = random.Random(args.seed)
    survived = 0
    with tempfile.TemporaryDirectory(prefix="wv-chaos-") as temp:
        data = Path(temp) / "data"
        for t in range(args.tries):
            delay = rng.uniform(0, args.max_delay)
            result = one_try(Path(temp) / f"try{t}", data, args, delay, rng)
            ok = result["exit"] == 0 and result["killed"] and bool(result["restarts"])
            survived += ok
            print(f"try {t + 1}: delay {delay:.2f} s, exit {result['exit']}, "
                  f"{'survived' if ok else 'FAILED'}; {described(result)}", flush=True)  # fmt: skip
    print(f"survived {survived} of {args.tries}")


if __name__ == "__main__":
    main()
