"""The round loop alone on Ray, to compare two commits: a private local Ray, the
Coordinator in this process, the replicas as Ray actors (packed as the command packs
them), the default config; the time of rounds 6 to the end, without start-up or exit.

    python benchmarks/round_loop.py [--rounds 400] [--set section.key=value ...]

Whole-process timings (P7: benchmarks/p7_vs_loop.py) include Ray's start and the exit,
which vary more than the rounds from one run to the next on a shared box; to compare
commits, run this from a clone of each in alternation (A, B, A, B, …).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WARM_ROUNDS = 5  # the first rounds run alone (round 1 measures γ0) and warm the actors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import ray

    from cluster.actors import RayReplicaGroup
    from cluster.resources import resolve_packing
    from coordinator.coordinator import Coordinator
    from foundation.config import load_config

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as storage:
        sets = [f"run.storage={storage}", f"train.rounds={args.rounds}",
                f"train.eval_every={args.rounds}", "train.checkpoint_every=0",
                *args.overrides]  # fmt: skip
        config = resolve_packing(load_config(REPO / "jobs/configs/default.toml", sets), ray.nodes())
        coordinator = Coordinator(config, RayReplicaGroup)
        try:
            for _ in range(WARM_ROUNDS):
                coordinator.step()
            started = time.perf_counter()
            while not coordinator.done:
                coordinator.advance(0.25)
            seconds = time.perf_counter() - started
        finally:
            coordinator.shutdown()
            ray.shutdown()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    timed = args.rounds - WARM_ROUNDS
    print(f"round loop at {commit or '?'}: {seconds:.2f} s for rounds {WARM_ROUNDS + 1}–"
          f"{args.rounds} ({1000 * seconds / timed:.1f} ms a round, the final evaluation "
          "included)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
