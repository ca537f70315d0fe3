"""P4: wall time for rSGD (y replicas) to reach the final test accuracy of Ray Train DDP.

Per pair (A B A B …, the same seed in both halves):

A. Ray Train: a TorchTrainer with y CPU workers (gloo), the same model, per-worker batch
   size, lr, momentum and number of steps per worker as B. Every worker draws its own
   shuffled minibatches of the training set (foundation.data + replicas.stream.BatchStream,
   seeded like replica `rank` of B); DDP averages the gradients; all start from the
   initialization of B's replica 0. At the end rank 0 evaluates test accuracy. Timed:
   trainer.fit() start to end (driver), and from inside the workers the time from the
   first training step to the end of the final evaluation (no worker-group start-up).
B. The service: a Coordinator driving y replica actors (RayReplicaGroup) on the same
   Ray, train.rounds × K = the same steps per replica, the center evaluated every
   --eval-every rounds in this driver loop. Time to target = seconds until the first
   evaluation whose center test accuracy ≥ A's final accuracy (or "not reached"),
   counted from the Coordinator's construction (actor start-up included) and,
   separately, from the first round.

P4 = median over pairs of B's time to target ÷ A's fit() wall time (target ≤ 0.5).

    .venv/bin/python benchmarks/p4_vs_ddp.py [--replicas 2] [--steps 1000] [--pairs 5]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, cast

import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from _timing import header
from common import format_ratio, format_seconds, median_of_ratios, ratio, time_to_target
from torch.nn.parallel import DistributedDataParallel

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from foundation.config import load_config
from foundation.data import load_dataset
from foundation.models import build_model, count_parameters
from jobs import CONFIG_DIR
from replicas.replica import replica_seed
from replicas.stream import BatchStream

# --------------------------------------------------------------------------- A: DDP


def ddp_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: plain SGD + momentum under DDP, then rank 0 evaluates.

    Runs in the worker processes: it imports only installed modules (no benchmarks/).
    """
    entered = time.time()
    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    data = load_dataset(cfg["dataset"], cfg["root"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(replica_seed(cfg["seed"], 0))  # the init of rSGD's replica 0
        model = build_model(cfg["arch"], data.input_shape, data.num_classes)
    model = ray.train.torch.prepare_model(model)  # DistributedDataParallel (gloo on CPU)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"]
    )
    stream = BatchStream(
        data.train.x, data.train.y, cfg["batch_size"], seed=replica_seed(cfg["seed"], rank)
    )
    model.train()
    loop_start = time.time()
    for _ in range(cfg["steps"]):
        x, y = stream.next()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    loop_end = time.time()
    accuracy = math.nan
    if rank == 0:
        net = model.module if isinstance(model, DistributedDataParallel) else model
        net.eval()
        with torch.no_grad():
            accuracy = float((net(data.test.x).argmax(1) == data.test.y).float().mean())
    done = time.time()
    metrics = {
        "test_accuracy": accuracy,
        "entered": entered,
        "loop_start": loop_start,
        "loop_end": loop_end,
        "done": done,
    }
    ray.train.report(metrics)
    return metrics


@dataclass(frozen=True)
class DdpResult:
    accuracy: float
    fit_s: float
    """trainer.fit() start to end, in the driver."""
    startup_s: float
    """fit() start until rank 0 entered the training function (worker group, gloo)."""
    setup_s: float
    """rank 0's training function until its first step (data loaded, model wrapped)."""
    to_accuracy_s: float
    """fit() start until rank 0 finished its final evaluation."""
    train_eval_s: float
    """first training step until the end of rank 0's final evaluation (inside the worker)."""


def run_ddp(args: argparse.Namespace, seed: int, root: str, storage: str) -> DdpResult:
    cfg = {
        "dataset": "mnist1d", "root": root, "arch": args.arch, "seed": seed,
        "lr": args.lr, "momentum": args.momentum, "nesterov": False,
        "batch_size": args.batch_size, "steps": args.steps,
    }  # fmt: skip
    # Ray 2.60 runs Ray Train v2 (RAY_TRAIN_V2_ENABLED defaults on): its TorchTrainer
    # takes a function that returns a value and hands rank 0's back as result.return_value;
    # the stubs mypy sees are v1's, hence the cast and the getattr.
    trainer = ray.train.torch.TorchTrainer(
        cast(Any, ddp_worker),
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=args.replicas, use_gpu=False),
        run_config=ray.train.RunConfig(
            name=f"ddp-seed{seed}-{time.time_ns()}", storage_path=storage
        ),
    )
    start = time.time()
    result = trainer.fit()
    end = time.time()
    m = getattr(result, "return_value", None) or result.metrics
    if not isinstance(m, dict):
        raise RuntimeError(f"rank 0 returned {m!r}, not its metrics")
    return DdpResult(
        accuracy=float(m["test_accuracy"]),
        fit_s=end - start,
        startup_s=m["entered"] - start,
        setup_s=m["loop_start"] - m["entered"],
        to_accuracy_s=m["done"] - start,
        train_eval_s=m["done"] - m["loop_start"],
    )


# --------------------------------------------------------------------------- B: rSGD


@dataclass(frozen=True)
class RsgdResult:
    evaluations: list[tuple[int, float, float, float]]
    """(steps per replica, seconds since construction, seconds since round 1, accuracy)."""
    startup_s: float
    """Coordinator construction: placement group, replica actors, data loaded."""
    eval_s: float
    """Seconds spent in evaluate() up to the last evaluation taken."""

    def to_target(self, target: float, from_start: bool = True) -> float | None:
        column = 1 if from_start else 2
        return time_to_target([(e[column], e[3]) for e in self.evaluations], target)

    def steps_to(self, target: float) -> int | None:
        return next((e[0] for e in self.evaluations if e[3] >= target), None)


def run_rsgd(
    args: argparse.Namespace, seed: int, root: str, storage: str, target: float
) -> RsgdResult:
    k = args.coupling_period
    sets = [
        f"run.storage={storage}", f"run.name=rsgd-seed{seed}-{time.time_ns()}", f"run.seed={seed}",
        f"data.root={root}", f"data.batch_size={args.batch_size}", f"model.arch={args.arch}",
        "algorithm.kind=rsgd", f"algorithm.replicas={args.replicas}",
        f"algorithm.coupling_period={k}", f"algorithm.lr={args.lr}",
        f"algorithm.momentum={args.momentum}", f"scoping.gamma0={args.gamma0}",
        f"scoping.gamma_max={args.gamma_max}", f"train.rounds={args.steps // k}",
        "train.eval_every=100000000", "train.checkpoint_every=0",
        "resources.cpus_per_replica=1",
    ]  # fmt: skip
    config = load_config(CONFIG_DIR / "rsgd.toml", sets)
    start = time.perf_counter()
    coordinator = Coordinator(config, RayReplicaGroup)
    ready = time.perf_counter()
    evaluations: list[tuple[int, float, float, float]] = []
    eval_s = 0.0
    try:
        while not coordinator.done:
            progress = coordinator.step()
            before = time.perf_counter()
            if "center_test_accuracy" in progress:
                # The Coordinator evaluates by itself after its last round (its time is
                # inside step()); take that one instead of evaluating twice.
                accuracy = progress["center_test_accuracy"]
            elif coordinator.round % args.eval_every == 0:
                accuracy = coordinator.evaluate()["center"]["test_accuracy"]
            else:
                continue
            now = time.perf_counter()
            eval_s += now - before
            evaluations.append((coordinator.round * k, now - start, now - ready, accuracy))
            if accuracy >= target and not args.run_to_end:
                break
    finally:
        coordinator.shutdown()
    return RsgdResult(evaluations, ready - start, eval_s)


# --------------------------------------------------------------------------- driver


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--replicas", type=int, default=2, help="y: DDP workers = rSGD replicas")
    p.add_argument("--steps", type=int, default=1000, help="SGD steps per worker/replica")
    p.add_argument("--coupling-period", type=int, default=10, help="K (steps per round)")
    p.add_argument("--gamma0", type=float, default=0.01)
    p.add_argument("--gamma-max", type=float, default=1.0)
    p.add_argument("--arch", default="mlp", choices=("mlp", "cnn1d"))
    p.add_argument("--batch-size", type=int, default=100, help="per worker/replica")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--eval-every", type=int, default=5, help="rSGD: evaluate every E rounds")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="pair i uses seed + i")
    p.add_argument(
        "--run-to-end", action="store_true", help="rSGD: keep training after reaching target"
    )
    args = p.parse_args()
    if args.steps % args.coupling_period:
        p.error(f"--steps {args.steps} is not a multiple of --coupling-period")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="wv-p4-")
    root, storage = os.path.join(work, "data"), os.path.join(work, "runs")
    data = load_dataset("mnist1d", root)  # build the Parquet cache once, outside the timing
    params = count_parameters(build_model(args.arch, data.input_shape, data.num_classes))
    header(
        "P4: rSGD time to the DDP accuracy ÷ Ray Train TorchTrainer DDP wall time",
        {
            "settings": (
                f"MNIST-1D ({len(data.train.y)} train / {len(data.test.y)} test), "
                f"{args.arch} ({params} parameters), y = {args.replicas}, "
                f"{args.steps} steps per worker/replica, batch {args.batch_size} per "
                f"worker/replica, lr {args.lr}, momentum {args.momentum}"
            ),
            "rSGD": (
                f"K = {args.coupling_period} ({args.steps // args.coupling_period} rounds), "
                f"γ exponential {args.gamma0} → {args.gamma_max}, center evaluated every "
                f"{args.eval_every} rounds ({args.eval_every * args.coupling_period} steps)"
                + (", run to the end" if args.run_to_end else ", stopped at the target")
            ),
            "DDP": "TorchTrainer, CPU workers, gloo, torch.optim.SGD, grads averaged",
            "pairs": f"{args.pairs} (DDP then rSGD, same seed; seeds {args.seed}..)",
        },
    )
    # Logical CPUs: y for the DDP workers, y for the replicas (only one side runs at a time).
    ray.init(
        num_cpus=2 * args.replicas, include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR,
    )  # fmt: skip
    fit_pairs: list[tuple[float | None, float]] = []
    acc_pairs: list[tuple[float | None, float]] = []
    inner_pairs: list[tuple[float | None, float]] = []
    for i in range(args.pairs):
        seed = args.seed + i
        ddp = run_ddp(args, seed, root, storage)
        rsgd = run_rsgd(args, seed, root, storage, ddp.accuracy)
        reached = rsgd.to_target(ddp.accuracy)
        reached_inner = rsgd.to_target(ddp.accuracy, from_start=False)
        steps = rsgd.steps_to(ddp.accuracy)
        last = rsgd.evaluations[-1]
        fit_pairs.append((reached, ddp.fit_s))
        acc_pairs.append((reached, ddp.to_accuracy_s))
        inner_pairs.append((reached_inner, ddp.train_eval_s))
        print(f"pair {i + 1} (seed {seed}):")
        print(
            f"  DDP : final test accuracy {ddp.accuracy:.4f}; fit() {ddp.fit_s:.2f} s = "
            f"worker-group start-up {ddp.startup_s:.2f} + in-worker setup (data, DDP wrap) "
            f"{ddp.setup_s:.2f} + {args.steps} steps and final eval {ddp.train_eval_s:.2f} + "
            f"teardown {ddp.fit_s - ddp.to_accuracy_s:.2f} s"
        )
        best = max(e[3] for e in rsgd.evaluations)
        if steps is not None:
            at = next(e[3] for e in rsgd.evaluations if e[0] == steps)
            where = f"center {at:.4f} at step {steps}"
        else:
            where = f"center at most {best:.4f} by step {last[0]}"
        print(
            f"  rSGD: {where}; time to target {format_seconds(reached)} = start-up "
            f"(actors, data) {rsgd.startup_s:.2f} s + from round 1 "
            f"{format_seconds(reached_inner)} (of which {len(rsgd.evaluations)} "
            f"evaluations {rsgd.eval_s:.2f} s)"
        )
        print(
            f"  ratios: ÷ fit() {format_ratio(ratio(reached, ddp.fit_s))}, "
            f"÷ DDP accuracy ready {format_ratio(ratio(reached, ddp.to_accuracy_s))}, "
            f"without start-up {format_ratio(ratio(reached_inner, ddp.train_eval_s))}",
            flush=True,
        )
        curve = " ".join(f"{e[0]}:{e[3]:.3f}" for e in rsgd.evaluations)
        print(f"  rSGD center accuracy by step: {curve}", flush=True)
    print("summary (median over pairs of the per-pair ratio):")
    fit, acc, inner = (
        format_ratio(median_of_ratios(p)) for p in (fit_pairs, acc_pairs, inner_pairs)
    )
    print(f"  rSGD time to target ÷ DDP fit() wall time:          {fit}")
    print(f"  rSGD time to target ÷ DDP time until its accuracy:  {acc}")
    print(f"  the same, both without start-up (first step on):    {inner}")
    print(f"P4 = {fit} (target <= 0.5)")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)  # data caches, run directories


if __name__ == "__main__":
    main()
