"""Side-by-side timing for the benchmarks: A B A B …, medians, and what was run where.

Machines here are shared and noisy, so a figure is a ratio of two things measured in
alternation in one run (docs/performance.md, "How we measure"), never two runs far apart.
"""

from __future__ import annotations

import os
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
    """What was run, where, and how busy the box was: every benchmark's first lines."""
    from common import environment, exact_command

    print(figure)
    print(f"  command: {exact_command()}")
    print(f"  {environment()}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  load average at start (1, 5, 15 min): {load}")  # a busy box slows either side
    for key, value in settings.items():
        print(f"  {key}: {value}")
    sys.stdout.flush()


def report_pairs(label_a: str, label_b: str, pairs: list[tuple[float, float]], unit: str) -> None:
    for i, (x, y) in enumerate(pairs, 1):
        print(f"  pair {i}: {label_a} {x:.4g} {unit}, {label_b} {y:.4g} {unit}, ratio {x / y:.3f}")
    print(
        f"  median ratio {label_a} / {label_b}: {median_ratio(pairs):.3f} over {len(pairs)} pairs"
    )
