"""P2: y = 8 replicas packed in one process (torch.func) ÷ the same 8 stepped one after
another in one process (what the reference code does). Reported as a speed-up: time of
the sequential round ÷ time of the packed round, K local steps each.

Target: ≥ 1.5× on CPU, ≥ 3× on a GPU.

    python benchmarks/p2_packed.py [--arch mlp] [--replicas 8] [--k 10] [--device cpu]
        [--threads 1] [--force-vmap] [--profile]

The packed side uses replicas/packed_forward.py's batched kernels where the model allows
(mlp, cnn1d) and torch.func's vmap otherwise; --force-vmap measures the vmap path.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
from _timing import alternate, header, median_ratio, report_pairs, seconds

from foundation.config import load_config
from replicas.packed import PackedReplicas
from replicas.replica import Replica


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per measurement")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--force-vmap", action="store_true", help="pack with vmap only")
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header("P2 packed replicas: sequential time ÷ packed time", vars(args))
    storage = tempfile.mkdtemp(prefix="wv-p2-")
    sets = [f"run.storage={storage}", f"data.root={storage}/data", f"model.arch={args.arch}",
            f"algorithm.coupling_period={args.k}", f"data.batch_size={args.batch_size}",
            f"algorithm.replicas={args.replicas}"]  # fmt: skip
    config = load_config(None, sets)
    indices = list(range(args.replicas))
    packed = PackedReplicas(indices, config, args.device, force_vmap=args.force_vmap)
    print(f"  packed forward: {packed.forward_kind}")
    sequential = [Replica(i, config, args.device) for i in indices]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_sequential() -> float:
        def rounds() -> None:
            for _ in range(args.rounds):
                for replica in sequential:
                    replica.round(None, 0.0, 0.0)
            sync()

        return seconds(rounds)

    def run_packed() -> float:
        def rounds() -> None:
            for _ in range(args.rounds):
                packed.round(None, 0.0, 0.0)
            sync()

        return seconds(rounds)

    run_sequential(), run_packed()  # warm up
    pairs = alternate(run_sequential, run_packed, args.pairs)
    report_pairs("sequential", "packed", pairs, "s")
    per_step = [p / (args.rounds * args.k) * 1000 for _, p in pairs]
    print(
        f"  packed: {sorted(per_step)[len(per_step) // 2]:.3f} ms per step of all {args.replicas}"
    )
    print(f"P2 = {median_ratio(pairs):.2f}x (target >= 1.5x on CPU, >= 3x on a GPU)")
    if args.profile:
        for label, run in (("sequential", run_sequential), ("packed", run_packed)):
            print_profile(label, run)


def print_profile(label: str, run: Callable[[], float]) -> None:
    """torch.profiler's operators by self time over one measurement (args.rounds rounds)."""
    with torch.profiler.profile() as prof:
        run()
    print(f"\n{label}: operators by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
