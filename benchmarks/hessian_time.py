"""Wall time of the top Hessian eigenvalue, as the flatness report computes it.

    python benchmarks/hessian_time.py                                # MNIST-1D MLP, 1000 samples
    python benchmarks/hessian_time.py --run /tmp/flat-runs/smoke     # that run's center
    python benchmarks/hessian_time.py --arch resnet18 --device cuda  # CIFAR-10-shaped, on a GPU

Times landscape.hessian_top_eigenvalues (Lanczos on Hessian-vector products of the mean
cross-entropy over the first --samples training samples, k = 1, tol 1e-5, at most 60
HVPs: the defaults of jobs.flatness) --reps times after one untimed warm-up, and prints
the median with every setting that changes it. The HVP count depends on the spectrum, so
the time per HVP is printed too. Without a cached data set (CIFAR-10 is never downloaded
here) the inputs are random tensors of the right shape, and the output says so: the
timing of one HVP does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import Tensor, nn

from foundation.data import DatasetError, load_dataset
from foundation.models import ARCHS, build_model, count_parameters
from landscape import hessian_top_eigenvalues

DATASET = {"mlp": "mnist1d", "cnn1d": "mnist1d", "smallconvnet": "cifar10", "resnet18": "cifar10"}
SHAPES = {"mnist1d": (40,), "cifar10": (3, 32, 32)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=ARCHS, default="mlp")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--samples", type=int, default=1000, help="first N training samples")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (>= 5 to report)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--chunk", type=int, default=256, help="samples per HVP chunk")
    p.add_argument("--k", type=int, default=1, help="top-k eigenvalues")
    p.add_argument("--max-steps", type=int, default=60, help="at most this many HVPs")
    p.add_argument("--data-root", default="data", help="Parquet cache of the data sets")
    p.add_argument("--run", help="time the center of this run directory instead of a fresh net")
    return p.parse_args(argv)


def model_and_data(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, str, str]:
    """(model, x, y, what the model is, what the data is), on args.device."""
    if args.run:
        from jobs import flatness  # the report's own loading: BatchNorm recomputed, eval mode

        loaded = flatness.open_run(args.run)
        spec = flatness.model_specs(loaded, "run", max_replicas=0)[0]
        model, note = flatness.prepare_model(spec, args.device)
        data = flatness.dataset_of(loaded.config)
        n = min(args.samples, len(data.train.y))
        what = f"center of {loaded.run.path} at round {loaded.round} (BatchNorm: {note})"
        x, y = data.train.x[:n], data.train.y[:n]
        source = f"the first {n} {data.name} training samples (real)"
        args.arch = loaded.config.model.arch
        return model, x.to(args.device), y.to(args.device), what, source
    name = DATASET[args.arch]
    try:
        data = load_dataset(name, args.data_root, download=False)
        n = min(args.samples, len(data.train.y))
        x, y = data.train.x[:n], data.train.y[:n]
        source = f"the first {n} {name} training samples (real)"
    except DatasetError:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.samples, *SHAPES[name], generator=g)
        y = torch.randint(0, 10, (args.samples,), generator=g)
        source = f"{args.samples} random inputs shaped like {name} (no cached {name}): timing only"
    torch.manual_seed(0)
    model = build_model(args.arch, SHAPES[name], 10).to(args.device).eval()
    return model, x.to(args.device), y.to(args.device), "fresh init (seed 0)", source


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # tiny models run far slower on 2 threads of 2 cores
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("hessian_time: --device cuda but no CUDA device here", file=sys.stderr)
        return 2
    model, x, y, what, source = model_and_data(args)

    def once() -> tuple[float, int, float, bool]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # convergence is printed instead
            result = hessian_top_eigenvalues(
                model, x, y, k=args.k, chunk_size=args.chunk, max_steps=args.max_steps
            )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (
            time.perf_counter() - started,
            result.steps,
            float(result.values[0]),
            result.converged,
        )

    once()  # warm-up: allocator, kernels, caches
    runs = [once() for _ in range(args.reps)]
    times = [t for t, *_ in runs]
    median = statistics.median(times)
    _, steps, top, converged = runs[-1]
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    print(
        f"hessian_time: top-{args.k} Hessian eigenvalue, Lanczos "
        f"(tol 1e-5, <= {args.max_steps} HVPs)"
    )
    print(f"  command  python benchmarks/hessian_time.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"  model    {args.arch}, {count_parameters(model):,} parameters, {what}")
    print(f"  data     {source}")
    print(
        f"  machine  {device}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, {cpu_name()} ({os.cpu_count()} cores), "
        f"HVP chunk {args.chunk}"
    )
    print(f"  reps     {args.reps} timed after 1 warm-up: " + ", ".join(f"{t:.4g}" for t in times))
    note = "" if args.reps >= 5 else "  (fewer than 5 repetitions: not a reportable median)"
    print(
        f"  median   {median:.4g} s (min {min(times):.4g}, max {max(times):.4g}); {steps} HVPs, "
        f"{median / steps * 1000:.4g} ms per HVP; λ_max = {top:.6g}"
        f"{'' if converged else ' (NOT converged)'}{note}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
