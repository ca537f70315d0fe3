"""Replica actors on Ray: a placement group, one actor per unit, one gather per round.

This is the only place that turns Replica (a plain class), or PackedReplicas (p
replicas stepped together on one device), into an actor. Following Ray Train's worker
group: every .remote() first, then one wait over all of them with a timeout; if
startup fails, whatever was started is killed before the error goes up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from coordinator.groups import ReplicaLost, RoundOutcome, as_list, layout, locate, unpack
from foundation.config import Config
from foundation.ingredients import Ingredients
from replicas.packed import PackedReplicas
from replicas.replica import Replica

STARTUP_TIMEOUT_S = 300.0
INLINE_BYTES = 64 * 1024  # below Ray's 100 KiB limit for arguments inlined in the task


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


def unit_bundles(config: Config, cluster: dict[str, float]) -> list[dict[str, float]]:
    """One placement-group bundle per actor: a replica's resources × the replicas in it."""
    one = replica_resources(config, cluster)
    return [{k: v * len(unit) for k, v in one.items()} for unit in layout(config)]


class RayReplicaGroup:
    """The replicas of one run as Ray actors in one placement group (PACK).

    `placement` = (group, first bundle index) uses bundles that someone else reserved,
    e.g. a Tune trial that holds [coordinator, unit bundles…] at once; otherwise the
    group reserves its bundles itself, and releases them at shutdown.
    """

    def __init__(
        self,
        config: Config,
        replica_cls: type[Replica] = Replica,
        placement: tuple[PlacementGroup, int] | None = None,
        parts: Ingredients | None = None,
    ) -> None:
        self.config = config
        # Given parts (the Python API's objects) go to the object store once; None: each
        # replica resolves the config's names (import paths) on its own node.
        self.parts = None if parts is None else ray.put(parts)
        self.replica_cls = replica_cls  # tests pass a subclass that injects faults
        self.units_of = layout(config)
        self.packed = config.resources.replicas_per_actor > 1
        if placement is None:
            bundles = unit_bundles(config, ray.cluster_resources())
            self.pg = placement_group(bundles, strategy="PACK")
            self.first_bundle, self.owns_pg = 0, True
        else:
            self.pg, self.first_bundle = placement
            self.owns_pg = False
        self.actors: list[Any] = []
        self.lost: set[int] = set()  # units whose actor is gone
        try:
            ray.get(self.pg.ready(), timeout=STARTUP_TIMEOUT_S)
            self.actors = [self._start(u) for u in range(len(self.units_of))]
            sizes = ray.get([a.ready.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        except BaseException:
            self.shutdown()
            raise
        self.size, self.num_params = config.algorithm.replicas, int(sizes[0])

    def _start(self, u: int) -> Any:
        bundle = self.pg.bundle_specs[self.first_bundle + u]
        gpus, cpus = bundle.get("GPU", 0.0), bundle.get("CPU", 0.0)
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=self.first_bundle + u
        )
        device, threads = ("cuda" if gpus else "cpu"), max(1, int(cpus))
        if self.packed:
            packed = ray.remote(PackedReplicas).options(
                num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy
            )
            return packed.remote(self.units_of[u], self.config, device, threads, parts=self.parts)
        single = ray.remote(self.replica_cls).options(
            num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy
        )
        return single.remote(self.units_of[u][0], self.config, device, threads, parts=self.parts)

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        shared = self._share(center)
        refs = [a.round.remote(shared, gamma, rho) for a in self.actors]
        return self._gather(refs)

    @staticmethod
    def _share(center: np.ndarray | None) -> Any:
        """A large center is put once and every replica reads that one object-store copy;
        a small one (under Ray's inline limit) rides inside each call, which saves the
        object-store round trip that dominates the coupling cost of small models (P1)."""
        if center is None or center.nbytes < INLINE_BYTES:
            return center
        return ray.put(center)

    def _gather(self, refs: list[Any]) -> list[RoundOutcome]:
        """Wait for all units at once; the dead and the late come back as ReplicaLost."""
        timeout = self.config.train.round_timeout_s
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        outcomes: list[RoundOutcome] = []
        for u, ref in enumerate(refs):
            if ref in pending:
                outcomes += self._lose(u, f"no result within {timeout:g} s")
                continue
            try:
                outcomes += unpack(ray.get(ref), self.packed)
            except ray.exceptions.RayActorError as err:
                outcomes += self._lose(u, f"actor died ({type(err).__name__})")
        return outcomes

    def _lose(self, u: int, reason: str) -> list[RoundOutcome]:
        ray.kill(self.actors[u])  # a hung actor must not come back and write later
        self.lost.add(u)
        return [ReplicaLost(reason)] * len(self.units_of[u])

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        center_ref = ray.put(center)
        refs = [
            a.evaluate.remote(center_ref if u == 0 else None) for u, a in enumerate(self.actors)
        ]
        results = ray.get(refs, timeout=self.config.train.round_timeout_s)
        return [r for result in results for r in as_list(result, self.packed)]

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        state: dict[str, Any] = ray.get(
            self.actors[0].center_state.remote(center), timeout=self.config.train.round_timeout_s
        )
        return state

    def states(self) -> list[dict[str, Any]]:
        results = ray.get([a.state_dict.remote() for a in self.actors])
        return [s for result in results for s in as_list(result, self.packed)]

    def load_states(self, states: list[dict[str, Any]]) -> None:
        refs = []
        for actor, unit in zip(self.actors, self.units_of, strict=True):
            mine = [states[i] for i in unit]
            refs.append(actor.load_state_dict.remote(mine if self.packed else mine[0]))
        ray.get(refs, timeout=STARTUP_TIMEOUT_S)

    def replace(self, index: int, state: dict[str, Any]) -> None:
        u, row = locate(index, self.config.resources.replicas_per_actor)
        if u in self.lost:  # its bundle in the placement group is free again
            self.actors[u] = self._start(u)
            self.lost.discard(u)
        actor = self.actors[u]
        ref = (
            actor.load_member_state.remote(row, state)
            if self.packed
            else actor.load_state_dict.remote(state)
        )
        ray.get(ref, timeout=STARTUP_TIMEOUT_S)

    def pids(self) -> list[int]:
        pids: list[int] = ray.get([a.pid.remote() for a in self.actors])
        return pids

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.owns_pg:
            remove_placement_group(self.pg)
