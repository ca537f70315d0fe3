"""Replica actors on Ray: a placement group, one actor per replica, one ray.get per round.

This is the only place that turns Replica (a plain class) into an actor. Following
Ray Train's worker group: every .remote() first, then one ray.get(list, timeout);
if startup fails, whatever was started is killed before the error goes up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coordinator.coordinator import RoundResults
from jobs.config import Config
from replicas.replica import Replica

STARTUP_TIMEOUT_S = 300.0


class ResourceError(RuntimeError):
    """The cluster cannot hold the replicas this run asks for."""


class RoundTimeoutError(TimeoutError):
    """Some replicas did not finish a round within train.round_timeout_s."""


def replica_resources(config: Config, cluster: dict[str, float]) -> dict[str, float]:
    """CPUs and GPUs for one replica; fails with one line when the cluster is too small."""
    y, res = config.algorithm.replicas, config.resources
    gpus_total, cpus_total = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if res.gpus_per_replica * y > gpus_total:
        raise ResourceError(
            f"resources.gpus_per_replica = {res.gpus_per_replica} × {y} replicas needs "
            f"{res.gpus_per_replica * y:g} GPUs; the cluster has {gpus_total:g}"
        )
    # "Auto" shares the CPUs evenly, at most one each: replicas on a 2-core box still run.
    cpus = res.cpus_per_replica or min(1.0, math.floor(cpus_total / y * 100) / 100)
    if cpus <= 0 or cpus * y > cpus_total:
        raise ResourceError(f"{y} replicas × {cpus:g} CPUs do not fit in {cpus_total:g} CPUs")
    bundle = {"CPU": cpus}
    if res.gpus_per_replica:
        bundle["GPU"] = res.gpus_per_replica
    return bundle


class RayReplicaGroup:
    """The replicas of one run as Ray actors in one placement group (PACK)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bundle = replica_resources(config, ray.cluster_resources())
        y = config.algorithm.replicas
        self.pg: PlacementGroup = placement_group([dict(self.bundle)] * y, strategy="PACK")
        self.actors: list[Any] = []
        try:
            ray.get(self.pg.ready(), timeout=STARTUP_TIMEOUT_S)
            self.actors = [self._start(i) for i in range(y)]
            sizes = ray.get([a.ready.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise
        self.size, self.num_params = y, int(sizes[0])

    def _start(self, index: int) -> Any:
        gpus = self.bundle.get("GPU", 0.0)
        actor_cls = ray.remote(Replica)
        return actor_cls.options(
            num_cpus=self.bundle["CPU"],
            num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=index
            ),
            name=None,
        ).remote(index, self.config, "cuda" if gpus else "cpu", max(1, int(self.bundle["CPU"])))

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> RoundResults:
        # One ray.put: every replica reads the same object-store copy of the center.
        center_ref = ray.put(center) if center is not None else None
        refs = [a.round.remote(center_ref, gamma, rho) for a in self.actors]
        return self._gather(refs)

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        center_ref = ray.put(center)
        refs = [
            a.evaluate.remote(center_ref if i == 0 else None) for i, a in enumerate(self.actors)
        ]
        return self._gather(refs)

    def _gather(self, refs: list[Any]) -> Any:
        timeout = self.config.train.round_timeout_s
        _ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            slow = [refs.index(ref) for ref in pending]
            raise RoundTimeoutError(f"replicas {slow} did not finish within {timeout:g} s")
        return ray.get(refs)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        remove_placement_group(self.pg)
