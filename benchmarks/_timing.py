"""Side-by-side timing for the benchmarks: A B A B …, medians, and what was run where.

Machines here are shared and noisy, so a figure is a ratio of two things measured in
alternation in one run (../shared/benchmarks.md), never two runs far apart.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    a: Callable[[], float], b: Callable[[], float], pairs: int
) -> list[tuple[float, float]]:
    """Measure a, b, a, b, … `pairs` times; each callable returns its own measurement."""
    return [(a(), b()) for _ in range(pairs)]


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Median over pairs of a/b (the ratio is taken within each pair, then the median)."""
    return statistics.median(x / y for x, y in pairs)


def header(figure: str, settings: dict[str, object]) -> None:
    import ray
    import torch

    print(f"{figure}")
    print(f"  command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"  python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    for key, value in settings.items():
        print(f"  {key}: {value}")


def report_pairs(label_a: str, label_b: str, pairs: list[tuple[float, float]], unit: str) -> None:
    for i, (x, y) in enumerate(pairs, 1):
        print(f"  pair {i}: {label_a} {x:.4g} {unit}, {label_b} {y:.4g} {unit}, ratio {x / y:.3f}")
    print(
        f"  median ratio {label_a} / {label_b}: {median_ratio(pairs):.3f} over {len(pairs)} pairs"
    )
