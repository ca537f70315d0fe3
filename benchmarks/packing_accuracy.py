"""Does packing change what the default run learns? Center accuracy over seeds, packed and not.

resources.replicas_per_actor = auto packs the default's 4 replicas into one actor on a
machine with fewer CPUs (cluster/resources.py). The batched kernels sum in another order
than nn.Linear, so the trajectory (and center_sha256) differs in the last bits; this
script shows whether the accuracy does. Both forms run in this process (LocalGroup),
which gives the same numbers as the same packing on Ray (tests/localray), seeds
alternated (unpacked, packed, next seed, ...).

    python benchmarks/packing_accuracy.py [--seeds 5] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from _timing import header

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import load_config
from jobs import CONFIG_DIR


def center_accuracy(sets: list[str]) -> tuple[float, str]:
    coordinator = Coordinator(load_config(CONFIG_DIR / "default.toml", sets), LocalGroup)
    while not coordinator.done:
        coordinator.step()
    summary = coordinator.finish()
    return float(summary["center_test_accuracy"]), str(summary["center_sha256"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()
    header("Center test accuracy of the default, one replica per actor vs packed", vars(args))
    y = load_config(CONFIG_DIR / "default.toml", args.sets).algorithm.replicas
    results: dict[int, list[float]] = {1: [], y: []}  # one per actor; all in one actor
    with tempfile.TemporaryDirectory(prefix="wv-packacc-") as storage:
        for seed in range(args.seeds):
            for p in results:
                start = time.perf_counter()
                sets = [*args.sets, f"run.storage={storage}", f"run.name=s{seed}p{p}",
                        f"run.seed={seed}", f"resources.replicas_per_actor={p}"]  # fmt: skip
                accuracy, sha = center_accuracy(sets)
                results[p].append(accuracy)
                print(f"  seed {seed}  replicas_per_actor {p}: center test acc {accuracy:.4f}"
                      f"  ({time.perf_counter() - start:.0f} s, center_sha256 {sha[:8]})",
                      flush=True)  # fmt: skip
    for p, accs in results.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"replicas_per_actor {p}: {statistics.mean(accs):.4f} ± {spread:.4f} "
              f"over {len(accs)} seeds ({min(accs):.3f}–{max(accs):.3f})")  # fmt: skip
    diffs = [b - a for a, b in zip(results[1], results[y], strict=True)]
    print(f"packed − unpacked, per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")


if __name__ == "__main__":
    main()
