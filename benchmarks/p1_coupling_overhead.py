"""P1: rounds/s of rSGD ÷ rounds/s of the same replicas uncoupled (γ = 0, no center).

Both are the real service on a local Ray: a Coordinator driving replica actors, one
with algorithm.kind = rsgd (the center is formed, put once and pulled toward every
round), one with algorithm.kind = sgd (no center is sent). Evaluation and checkpoints
are off, so a round is exactly: K local steps per replica, the gather, the center.
Target: ≥ 0.95 at K = 10 on CPU (MNIST-1D cnn1d, 2 replicas).

    python benchmarks/p1_coupling_overhead.py [--arch cnn1d] [--replicas 2] [--k 10]
"""

from __future__ import annotations

import argparse
import tempfile

import ray
import torch
from _timing import alternate, header, median_ratio, report_pairs, seconds

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from foundation.config import load_config


def coordinator(kind: str, args: argparse.Namespace, storage: str) -> Coordinator:
    sets = [
        f"run.storage={storage}", f"run.name={kind}", f"data.root={storage}/data",
        f"algorithm.kind={kind}", f"model.arch={args.arch}", f"algorithm.replicas={args.replicas}",
        f"algorithm.coupling_period={args.k}", "scoping.kind=constant", "scoping.gamma0=0.5",
        "train.rounds=1000000", "train.eval_every=1000000", "train.checkpoint_every=0",
        "resources.cpus_per_replica=1",
    ]  # fmt: skip
    return Coordinator(load_config(None, sets), RayReplicaGroup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="cnn1d")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30, help="rounds per measurement")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header("P1 coupling overhead: rounds/s rSGD ÷ rounds/s uncoupled", vars(args))
    # Two groups exist at once but only one works at a time: logical CPUs for both.
    ray.init(num_cpus=2 * args.replicas, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="wv-p1-")
    coupled, uncoupled = coordinator("rsgd", args, storage), coordinator("sgd", args, storage)

    def rate(c: Coordinator) -> float:
        return args.rounds / seconds(lambda: [c.step() for _ in range(args.rounds)])

    for c in (coupled, uncoupled):  # warm up: first rounds pay for imports and caches
        rate(c)
    pairs = alternate(lambda: rate(coupled), lambda: rate(uncoupled), args.pairs)
    report_pairs("rSGD", "uncoupled", pairs, "rounds/s")
    print(f"P1 = {median_ratio(pairs):.3f} (target >= 0.95)")
    coupled.shutdown()
    uncoupled.shutdown()


if __name__ == "__main__":
    main()
