"""P6: peak memory per replica actor ÷ model+optimizer state size.

The real service on a local Ray: a Coordinator driving y replica actors
(RayReplicaGroup), a few rounds of K steps, then one evaluation (center, replicas,
ensemble). Each replica actor's peak resident set size is VmHWM from
/proc/<actor pid>/status, read from this driver with the pids the actors report
(Replica.pid). Model+optimizer state = (parameters + float buffers + momentum) × 4 bytes.
Target: ≤ 3× for models ≥ 10M parameters (resnet18, 11M).

CIFAR-10 cannot be downloaded here, so the script writes a small stand-in in the raw
on-disk format (cifar-10-batches-py: data_batch_1..5 and test_batch, random pixels)
under a temporary data.root; the service converts it to Parquet as it would the real one.
As references it measures Ray worker processes that only import things: nothing, torch,
and replicas.replica (torch, pyarrow and the service's modules).

    .venv/bin/python benchmarks/p6_memory.py [--archs resnet18,mlp] [--replicas 2]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
import torch.nn.functional as F
from _timing import header
from common import mib, model_counts, proc_status, state_bytes, write_cifar_standin

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from foundation.config import load_config
from foundation.data import load_dataset
from foundation.evaluation import EVAL_CHUNK, EVAL_TRAIN_SAMPLES
from foundation.models import build_model

DATASET_OF = {
    "mlp": "mnist1d",
    "cnn1d": "mnist1d",
    "smallconvnet": "cifar10",
    "resnet18": "cifar10",
}

TORCH_PROBE = "idle Ray worker that imported torch"


class ImportProbe:
    """A Ray actor that only imports the named modules and reports its pid."""

    def __init__(self, modules: list[str]) -> None:
        for name in modules:
            importlib.import_module(name)

    def pid(self) -> int:
        return os.getpid()


@dataclass(frozen=True)
class Measured:
    name: str
    peak: list[int]
    """VmHWM per process, bytes."""
    detail: list[dict[str, int]]
    """The memory fields of /proc/<pid>/status per process when measured."""


class PlainLoop:
    """A Ray actor that trains the same model in a plain PyTorch loop (torch.optim.SGD with
    momentum, random inputs of the same shape and batch size): what the same training
    costs without the service, for comparison."""

    def __init__(self, arch: str, input_shape: tuple[int, ...], batch: int, lr: float) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.model = build_model(arch, input_shape, 10).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.x = torch.randn(batch, *input_shape)
        self.y = torch.randint(0, 10, (batch,))

    def train(self, steps: int) -> int:
        for _ in range(steps):
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(self.x), self.y).backward()
            self.optimizer.step()
        return os.getpid()


def plain_loop(arch: str, args: argparse.Namespace, input_shape: tuple[int, ...]) -> Measured:
    remote_cls: Any = ray.remote(PlainLoop)
    actor = remote_cls.options(num_cpus=1).remote(arch, input_shape, args.batch_size, 0.1)
    pid: int = ray.get(actor.train.remote(args.rounds * args.k))
    status = proc_status(pid)
    ray.kill(actor)
    return Measured(f"plain PyTorch loop in a Ray actor: {arch}", [status["VmHWM"]], [status])


def probe(label: str, modules: list[str]) -> Measured:
    remote_cls: Any = ray.remote(ImportProbe)
    actor = remote_cls.options(num_cpus=0).remote(modules)
    pid: int = ray.get(actor.pid.remote())
    time.sleep(0.5)
    status = proc_status(pid)
    ray.kill(actor)
    return Measured(label, [status["VmHWM"]], [status])


@dataclass(frozen=True)
class ReplicaMemory:
    arch: str
    params: int
    float_buffers: int
    after_start: Measured
    after_train: Measured
    after_eval: Measured
    plain: Measured
    """The same model, batch and steps in a plain PyTorch loop (one actor)."""
    seconds: float

    @property
    def state(self) -> int:
        return state_bytes(self.params, self.float_buffers)


def measure(arch: str, args: argparse.Namespace, root: str, storage: str) -> ReplicaMemory:
    dataset = DATASET_OF[arch]
    sets = [
        f"run.storage={storage}", f"run.name=p6-{arch}", f"data.root={root}",
        f"data.dataset={dataset}", f"data.batch_size={args.batch_size}", f"model.arch={arch}",
        "algorithm.kind=rsgd", f"algorithm.replicas={args.replicas}",
        # One round more than is run: the Coordinator evaluates by itself after its last
        # round, and here the evaluation is measured on its own, after training.
        f"algorithm.coupling_period={args.k}", f"train.rounds={args.rounds + 1}",
        "train.eval_every=100000000", "train.checkpoint_every=0", "train.bn_batches=2",
        "resources.cpus_per_replica=1",
    ]  # fmt: skip
    config = load_config(None, sets)
    data = load_dataset(dataset, root, download=False)
    params, buffers = model_counts(build_model(arch, data.input_shape, data.num_classes))
    start = time.perf_counter()
    coordinator = Coordinator(config, RayReplicaGroup)
    try:
        group = coordinator.group
        assert isinstance(group, RayReplicaGroup)
        pids = group.pids()
        started = [proc_status(pid) for pid in pids]
        for _ in range(args.rounds):
            coordinator.step()
        trained = [proc_status(pid) for pid in pids]
        coordinator.evaluate()
        evaluated = [proc_status(pid) for pid in pids]
    finally:
        coordinator.shutdown()
    seconds = time.perf_counter() - start
    return ReplicaMemory(
        arch,
        params,
        buffers,
        Measured(arch, [s["VmHWM"] for s in started], started),
        Measured(arch, [s["VmHWM"] for s in trained], trained),
        Measured(arch, [s["VmHWM"] for s in evaluated], evaluated),
        plain_loop(arch, args, data.input_shape),
        seconds,
    )


def report(
    results: list[ReplicaMemory], references: list[Measured], args: argparse.Namespace
) -> None:
    torch_idle = next(r.peak[0] for r in references if r.name == TORCH_PROBE)
    print("reference processes: peak RSS (VmHWM), and what is resident now")
    for ref in [*references, *(r.plain for r in results)]:
        d = ref.detail[0]
        print(
            f"  {ref.name:48s} {mib(ref.peak[0]):7.1f} MiB  (now anon {mib(d['RssAnon']):.1f} "
            f"+ file {mib(d['RssFile']):.1f} + shmem {mib(d['RssShmem']):.1f} MiB)"
        )
    print()
    print(
        f"replica actors (Coordinator + RayReplicaGroup, rsgd): y = {args.replicas}, "
        f"{args.rounds} rounds × K = {args.k} steps, batch {args.batch_size}, then one "
        "evaluation (the center is evaluated on replica 0). Peak RSS (VmHWM) in MiB:"
    )
    print(
        "| model | parameters | float buffers | state MiB | replica | after start-up "
        "| after training | after eval | peak ÷ state | (peak − idle torch worker) ÷ state "
        "| plain PyTorch loop peak | plain ÷ state |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for a in range(len(r.after_eval.peak)):
            started, trained, peak = (
                m.peak[a] for m in (r.after_start, r.after_train, r.after_eval)
            )
            plain = r.plain.peak[0]
            print(
                f"| {r.arch} | {r.params:,} | {r.float_buffers:,} | {mib(r.state):.2f} | {a} "
                f"| {mib(started):.1f} | {mib(trained):.1f} | {mib(peak):.1f} "
                f"| {peak / r.state:.1f}× | {(peak - torch_idle) / r.state:.1f}× "
                f"| {mib(plain):.1f} | {plain / r.state:.1f}× |"
            )
    print()
    for r in results:
        for a, d in enumerate(r.after_eval.detail):
            print(
                f"  {r.arch} replica {a} at the end: RSS {mib(d['VmRSS']):.1f} MiB = anon "
                f"{mib(d['RssAnon']):.1f} + file {mib(d['RssFile']):.1f} + shmem "
                f"{mib(d['RssShmem']):.1f} MiB  (the run took {r.seconds:.1f} s)"
            )
    print()
    for r in results:
        if r.params >= 10_000_000:
            worst = max(r.after_eval.peak)
            print(
                f"P6 ({r.arch}, {r.params / 1e6:.1f}M parameters) = "
                f"{(worst - torch_idle) / r.state:.2f}: (worst replica's peak − an idle Ray "
                f"worker that imported torch, {mib(torch_idle):.0f} MiB) ÷ state; the peak "
                f"alone ÷ state = {worst / r.state:.2f} (target <= 3)"
            )
            plain = r.plain.peak[0]
            print(
                f"  training only: {max(r.after_train.peak) / r.state:.2f}; a plain PyTorch "
                f"loop of the same model, batch and steps: {plain / r.state:.2f} "
                f"({(plain - torch_idle) / r.state:.2f} less the idle torch worker)"
            )
    if any(r.params < 1_000_000 for r in results):
        print(
            "  small models (mlp): the ratio is the Python/torch/Ray runtime (an idle Ray "
            f"worker that imported torch holds {mib(torch_idle):.0f} MiB) over a state of "
            "well under 1 MiB; it says nothing about the service"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="resnet18,mlp", help="comma-separated model.arch")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=3, help="K, steps per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--per-batch",
        type=int,
        default=200,
        help="images per CIFAR batch file (5 × 200 = 1000 = one full evaluation chunk)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    header("P6: peak memory per replica actor ÷ model+optimizer state size", vars(args))
    work = Path(tempfile.mkdtemp(prefix="wv-p6-"))
    root, storage = str(work / "data"), str(work / "runs")
    if any(DATASET_OF[a] == "cifar10" for a in archs):
        n = write_cifar_standin(work / "data" / "cifar-10-batches-py", args.per_batch)
        print(f"  data: CIFAR-10 stand-in, {n} train / {args.per_batch} test random images")
        print(
            f"  evaluation forwards up to {EVAL_CHUNK} images at once (foundation.evaluation."
            f"EVAL_CHUNK): train accuracy on min({EVAL_TRAIN_SAMPLES}, {n}) images here"
        )
    for dataset in sorted({DATASET_OF[a] for a in archs}):
        load_dataset(dataset, root, download=False)  # the Parquet cache, built once here
    print("  state = (parameters + float buffers + momentum) × 4 bytes", flush=True)
    ray.init(
        num_cpus=args.replicas, include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR,
    )  # fmt: skip
    references = [
        probe("idle Ray worker (an actor that imports nothing)", []),
        probe(TORCH_PROBE, ["torch"]),
        probe("idle Ray worker that imported replicas.replica", ["replicas.replica"]),
    ]
    results = [measure(arch, args, root, storage) for arch in archs]
    print()
    report(results, references, args)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)  # data caches, run directories


if __name__ == "__main__":
    main()
