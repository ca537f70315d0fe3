"""Helpers shared by P4 (rSGD vs Ray Train DDP) and P6 (replica memory).

The pure functions here (time to target, medians of ratios that may be "not reached",
model+optimizer state arithmetic, /proc/<pid>/status parsing) are unit-tested in
tests/benchmarks/test_benchmark_helpers.py; the rest prints what was run, where and how.
"""

from __future__ import annotations

import math
import os
import pickle
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FLOAT32_BYTES = 4
MIB = 1024 * 1024


# ---------------------------------------------------------------- P4: time to target


def time_to_target(evaluations: Sequence[tuple[float, float]], target: float) -> float | None:
    """Seconds at the first evaluation whose accuracy reaches `target`, or None if none does.

    `evaluations` are (seconds since the start, test accuracy) in the order they were taken.
    """
    for seconds, accuracy in evaluations:
        if accuracy >= target:
            return seconds
    return None


def ratio(numerator: float | None, denominator: float) -> float:
    """numerator ÷ denominator, with a numerator of None ("not reached") as +inf."""
    if denominator <= 0:
        raise ValueError(f"the denominator must be positive, got {denominator}")
    return math.inf if numerator is None else numerator / denominator


def median_of_ratios(pairs: Sequence[tuple[float | None, float]]) -> float:
    """Median over pairs of a ÷ b, taken within each pair; a None counts as +inf, so
    the median is inf ("not reached") when at least half of the pairs did not reach."""
    if not pairs:
        raise ValueError("no pairs")
    ratios = sorted(ratio(a, b) for a, b in pairs)
    n = len(ratios)
    if n % 2:
        return ratios[n // 2]
    low, high = ratios[n // 2 - 1], ratios[n // 2]
    return math.inf if math.isinf(high) else (low + high) / 2


def format_ratio(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.3f}"


def format_seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} s"


# ---------------------------------------------------------------- P6: state size, memory


def state_floats(num_params: int, num_float_buffers: int, momentum: bool = True) -> int:
    """Floats of model+optimizer state: parameters + float buffers (+ one momentum per
    parameter for SGD with momentum)."""
    if num_params < 0 or num_float_buffers < 0:
        raise ValueError("counts must be non-negative")
    return num_params + num_float_buffers + (num_params if momentum else 0)


def state_bytes(num_params: int, num_float_buffers: int, momentum: bool = True) -> int:
    """Bytes of model+optimizer state in float32."""
    return FLOAT32_BYTES * state_floats(num_params, num_float_buffers, momentum)


def model_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, floating-point buffer values) of a model, as the replica lays them out."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return params, buffers


def parse_proc_status(text: str) -> dict[str, int]:
    """The memory fields ("VmHWM", "VmRSS", "RssAnon", …) of /proc/<pid>/status, in bytes."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * 1024
    return fields


def parse_vmhwm(text: str) -> int:
    """Peak resident set size (VmHWM) in bytes from the text of /proc/<pid>/status."""
    fields = parse_proc_status(text)
    if "VmHWM" not in fields:
        raise ValueError("no VmHWM line in this /proc/<pid>/status text")
    return fields["VmHWM"]


def proc_status(pid: int) -> dict[str, int]:
    return parse_proc_status(Path(f"/proc/{pid}/status").read_text())


def mib(n_bytes: float) -> float:
    return n_bytes / MIB


def write_cifar_standin(raw_dir: Path, per_batch: int = 64, seed: int = 0) -> int:
    """A small CIFAR-10 stand-in in the raw on-disk format (cifar-10-batches-py): five
    training batches and a test batch of `per_batch` random images each, pickled with
    bytes keys as the official files are. Returns the number of training images."""
    rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (raw_dir / name).write_bytes(pickle.dumps(batch, protocol=2))
    return 5 * per_batch


# ---------------------------------------------------------------- what was run where


def exact_command() -> str:
    """The command line as it can be typed again from the current directory."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return shlex.join([exe, *sys.argv])


def environment() -> str:
    import ray

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), cuda: {cuda}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
