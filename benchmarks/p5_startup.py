"""P5: time from `python -m jobs.train` to the first finished round, on CPU.

Starts the real command (which starts a local Ray and the replica actors, and loads the
cached data set) and reads its output until the first progress line. Median of several
runs; the data cache is built once beforehand, as it is after the first run on any
machine. The config is the default one, which is what `python -m jobs.train` runs
(--config jobs/configs/smoke.toml: the smoke config, one actor per replica).

Target: ≤ 6 s (docs/performance.md).

    python benchmarks/p5_startup.py [--runs 5] [--config PATH] [--phases]

--phases also times the same steps one by one in a fresh process (importing the job,
ray.init as jobs.train does it, the replica actors, the first round), and, in one more,
the floor of any run whose replicas are Ray actors that import torch: ray.init as
jobs.train does it, then one actor that only imports torch, also timed from the
process's start as P5 times the command.

The private Ray's dashboard starts once the first round is done, on the CPU the run
leaves (cluster/fast_start.py), so P5 does not include it; each run is also timed to the
line that says the dashboard is up (on a box whose cores the run keeps busy, that line
may not come before the run ends).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _timing import header


def first_round_seconds(config: str, storage: str) -> tuple[float, float]:
    """Seconds from the command's start to its first round's line and to the line that
    says its dashboard is up (which comes after the first round: cluster/fast_start.py;
    nan without one)."""
    command = [sys.executable, "-m", "jobs.train", "--config", config, "--fresh",
               "--set", f"run.storage={storage}", "--set", f"data.root={storage}/data"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    first_round = dashboard = float("nan")
    to_follow = False
    for line in proc.stdout:
        to_follow = to_follow or "(dashboard to follow)" in line
        if line.startswith("round ") and line.split()[1].startswith("1/"):
            first_round = time.perf_counter() - start
            if not to_follow:
                break
        if line.startswith("wv: Ray dashboard "):
            dashboard = time.perf_counter() - start
            break
    proc.terminate()
    proc.wait(timeout=60)
    return first_round, dashboard


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="jobs/configs/default.toml")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="also time each start-up step")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the fresh process of --phases
    parser.add_argument("--child-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_floor:
        time_floor()
        return
    if args.child:
        time_phases(args.config, args.child)
        return
    settings = {**vars(args), "WV_DASHBOARD": os.environ.get("WV_DASHBOARD", "1 (unset)")}
    header("P5 start-up: `python -m jobs.train` to the first finished round", settings)
    storage = tempfile.mkdtemp(prefix="wv-p5-")
    from foundation.data import load_dataset

    load_dataset("mnist1d", f"{storage}/data")  # the cache every later run finds
    runs = [first_round_seconds(args.config, storage) for _ in range(args.runs)]
    times, dashboards = [t for t, _ in runs], [d for _, d in runs]
    print("  runs: " + ", ".join(f"{t:.2f} s" for t in times))
    said = ["not before the run ended" if d != d else f"{d:.2f} s" for d in dashboards]  # nan
    print("  the dashboard said to be up at: " + ", ".join(said))
    print(f"P5 = {statistics.median(times):.2f} s median (target <= 6 s)")
    if args.phases:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        command = [sys.executable, __file__, "--config", args.config, "--child", storage]
        subprocess.run(command, check=True, env=env)
        floor_from_start(env)


def floor_from_start(env: dict[str, str]) -> None:
    """A --child-floor process, also timed from its start to its floor line, as P5
    times the command (the interpreter's start and `import ray` included)."""
    start = time.perf_counter()
    command = [sys.executable, __file__, "--child-floor"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("  floor on"):
            print(f"    from the process's start, as P5 counts: "
                  f"{time.perf_counter() - start:.2f} s")  # fmt: skip
    if proc.wait(timeout=120) != 0:
        raise SystemExit(f"the floor process failed with status {proc.returncode}")


def time_floor() -> None:
    """ray.init as jobs.train does it (WV_DASHBOARD as set), then one actor that only
    imports torch: what any run waits for before a replica actor can start training."""
    import ray

    from cluster.session import connect

    start = time.perf_counter()
    where = connect(dashboard_now=False)  # as a run does: its dashboard comes later
    mark = time.perf_counter()

    class ImportsTorch:
        def __init__(self) -> None:
            import torch  # noqa: F401

        def ready(self) -> bool:
            return True

    actor: Any = ray.remote(num_cpus=1)(ImportsTorch).remote()
    ray.get(actor.ready.remote())
    done = time.perf_counter()
    print(f"  floor on {where}: ray.init {mark - start:.2f} s, then one actor that only "
          f"imports torch {done - mark:.2f} s: {done - start:.2f} s")  # fmt: skip


def time_phases(config_path: str, storage: str) -> None:
    """The steps of `python -m jobs.train` up to the first round, timed one by one."""
    start = time.perf_counter()
    from cluster.actors import RayReplicaGroup
    from cluster.resources import resolve_packing
    from cluster.session import connect
    from coordinator.coordinator import Coordinator
    from foundation.config import load_config

    marks = [("import the job's modules", time.perf_counter())]
    connect(dashboard_now=False)  # as a run does: its dashboard comes later
    marks.append(("ray.init as jobs.train does it", time.perf_counter()))
    import ray

    sets = [f"run.storage={storage}/phases", f"data.root={storage}/data"]
    config = resolve_packing(load_config(config_path, sets), ray.nodes())
    # In this process, as jobs.train runs it on the private Ray it started.
    coordinator = Coordinator(config, RayReplicaGroup, fresh=True)
    marks.append(("replica actors ready (torch, data)", time.perf_counter()))
    coordinator.step()
    marks.append(("first round", time.perf_counter()))
    coordinator.shutdown()
    previous = start
    for label, mark in marks:
        print(f"  {label}: {mark - previous:.2f} s")
        previous = mark
    print(f"  total: {previous - start:.2f} s")


if __name__ == "__main__":
    main()
