"""P5: time from `python -m jobs.train` to the first finished round, on CPU.

Starts the real command (which starts a local Ray, the coordinator and the replica
actors, and loads the cached data set) and reads its output until the first progress
line. Median of several runs; the data cache is built once beforehand, as it is after
the first run on any machine.

Target: ≤ 12 s.

    python benchmarks/p5_startup.py [--runs 5] [--config jobs/configs/smoke.toml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _timing import header


def first_round_seconds(config: str, storage: str) -> float:
    command = [sys.executable, "-m", "jobs.train", "--config", config, "--fresh",
               "--set", f"run.storage={storage}", "--set", f"data.root={storage}/data"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    elapsed = float("nan")
    for line in proc.stdout:
        if line.startswith("round ") and "1/" in line.split()[1]:
            elapsed = time.perf_counter() - start
            break
    proc.terminate()
    proc.wait(timeout=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="jobs/configs/smoke.toml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    header("P5 start-up: `python -m jobs.train` to the first finished round", vars(args))
    storage = tempfile.mkdtemp(prefix="wv-p5-")
    from jobs.data import load_dataset

    load_dataset("mnist1d", f"{storage}/data")  # the cache every later run finds
    times = [first_round_seconds(args.config, storage) for _ in range(args.runs)]
    print("  runs: " + ", ".join(f"{t:.2f} s" for t in times))
    print(f"P5 = {statistics.median(times):.2f} s median (target <= 12 s)")


if __name__ == "__main__":
    main()
