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

from coordinator.groups import ReplicaLost, RoundOutcome
from jobs.config import Config
from replicas.replica import Replica

STARTUP_TIMEOUT_S = 300.0


class ResourceError(RuntimeError):
    """The cluster cannot hold the replicas this run asks for."""


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
    """The replicas of one run as Ray actors in one placement group (PACK).

    `placement` = (group, first bundle index) uses bundles that someone else reserved,
    e.g. a Tune trial that holds [coordinator, replica × y] at once; otherwise the group
    reserves y bundles itself, and releases them at shutdown.
    """

    def __init__(
        self,
        config: Config,
        replica_cls: type[Replica] = Replica,
        placement: tuple[PlacementGroup, int] | None = None,
    ) -> None:
        self.config = config
        self.replica_cls = replica_cls  # tests pass a subclass that injects faults
        y = config.algorithm.replicas
        if placement is None:
            self.bundle = replica_resources(config, ray.cluster_resources())
            self.pg = placement_group([dict(self.bundle)] * y, strategy="PACK")
            self.first_bundle, self.owns_pg = 0, True
        else:
            self.pg, self.first_bundle = placement
            self.bundle, self.owns_pg = dict(self.pg.bundle_specs[self.first_bundle]), False
        self.actors: list[Any] = []
        self.lost: set[int] = set()
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
        cpus = self.bundle.get("CPU", 0.0)
        actor_cls = ray.remote(self.replica_cls)
        return actor_cls.options(
            num_cpus=cpus,
            num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=self.first_bundle + index
            ),
            name=None,
        ).remote(index, self.config, "cuda" if gpus else "cpu", max(1, int(cpus)))

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        # One ray.put: every replica reads the same object-store copy of the center.
        center_ref = ray.put(center) if center is not None else None
        refs = [a.round.remote(center_ref, gamma, rho) for a in self.actors]
        return self._gather(refs)

    def _gather(self, refs: list[Any]) -> list[RoundOutcome]:
        """Wait for all replicas at once; the dead and the late come back as ReplicaLost."""
        timeout = self.config.train.round_timeout_s
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        outcomes: list[RoundOutcome] = []
        for index, ref in enumerate(refs):
            if ref in pending:
                outcomes.append(self._lose(index, f"no result within {timeout:g} s"))
                continue
            try:
                outcomes.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:
                outcomes.append(self._lose(index, f"actor died ({type(err).__name__})"))
        return outcomes

    def _lose(self, index: int, reason: str) -> ReplicaLost:
        ray.kill(self.actors[index])  # a hung actor must not come back and write later
        self.lost.add(index)
        return ReplicaLost(reason)

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        center_ref = ray.put(center)
        refs = [
            a.evaluate.remote(center_ref if i == 0 else None) for i, a in enumerate(self.actors)
        ]
        results: list[dict[str, Any]] = ray.get(refs, timeout=self.config.train.round_timeout_s)
        return results

    def states(self) -> list[dict[str, Any]]:
        states: list[dict[str, Any]] = ray.get([a.state_dict.remote() for a in self.actors])
        return states

    def load_states(self, states: list[dict[str, Any]]) -> None:
        refs = [a.load_state_dict.remote(s) for a, s in zip(self.actors, states, strict=True)]
        ray.get(refs, timeout=STARTUP_TIMEOUT_S)

    def replace(self, index: int, state: dict[str, Any]) -> None:
        if index in self.lost:  # its bundle in the placement group is free again
            self.actors[index] = self._start(index)
            self.lost.discard(index)
        ray.get(self.actors[index].load_state_dict.remote(state), timeout=STARTUP_TIMEOUT_S)

    def pids(self) -> list[int]:
        pids: list[int] = ray.get([a.pid.remote() for a in self.actors])
        return pids

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.owns_pg:
            remove_placement_group(self.pg)
