"""What one trial reserves (one placement group: coordinator + replica units), and how
many trials run at once."""

from __future__ import annotations

import dataclasses
import math

from cluster.resources import ResourceError, unit_bundles
from jobs.sweep.space import build_config, flat
from jobs.sweep.sweepfile import Sweep

Bundle = dict[str, float]


def with_gpus(sweep: Sweep, cluster: dict[str, float]) -> Sweep:
    """Apply sweep.gpus_per_replica: y GPUs per trial on a GPU cluster unless told otherwise."""
    setting, y = sweep.sweep.gpus_per_replica, sweep.base.algorithm.replicas
    gpus = cluster.get("GPU", 0.0)
    if setting == "auto":
        if sweep.base.resources.gpus_per_replica or not gpus:
            return sweep
        setting = min(1.0, math.floor(gpus / y * 100) / 100) or 0.0
    base = build_config({**flat(sweep.base), "resources.gpus_per_replica": float(setting)})
    return dataclasses.replace(sweep, base=base)


def trial_bundles(sweep: Sweep, cluster: dict[str, float]) -> list[Bundle]:
    """[coordinator, replica unit × units]: one placement group holds a whole trial, so a
    trial never starts with only part of its replicas placed."""
    head = {"CPU": sweep.sweep.coordinator_cpus}
    if sweep.sweep.replicas == "inprocess":
        return [head]
    return [head, *unit_bundles(sweep.base, cluster)]


def describe(bundle: Bundle) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def trials_that_fit(bundles: list[Bundle], cluster: dict[str, float]) -> int:
    need: dict[str, float] = {}
    for bundle in bundles:
        for kind, amount in bundle.items():
            need[kind] = need.get(kind, 0.0) + amount
    return min(
        math.floor(cluster.get(kind, 0.0) / amount + 1e-9)
        for kind, amount in need.items()
        if amount > 0
    )


def concurrency(sweep: Sweep, bundles: list[Bundle], cluster: dict[str, float]) -> int:
    fit = trials_that_fit(bundles, cluster)
    asked = sweep.sweep.max_concurrent_trials  # more than fit asks an autoscaler to grow
    need = ", ".join(f"{k} {sum(b.get(k, 0) for b in bundles):g}" for k in ("CPU", "GPU"))
    have = ", ".join(f"{k} {cluster.get(k, 0):g}" for k in ("CPU", "GPU"))
    if fit < 1 and not asked:
        raise ResourceError(
            f"one trial needs {need}; the cluster has {have} (lower resources.cpus_per_replica "
            "or sweep.coordinator_cpus, or set sweep.max_concurrent_trials on an autoscaling one)"
        )
    if fit < 1:
        print(f"wv: one trial needs {need}, the cluster has {have}: trials wait for more nodes")
    return asked or fit
