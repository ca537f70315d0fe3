"""What a run reserves on the cluster: CPUs and GPUs per replica, one placement-group
bundle per actor, and how the bundles are placed over the nodes.

resources.placement = "compact" (Ray's PACK, the default) puts the bundles on as few
nodes as possible: every round moves each replica's weights to the coordinator on the
driver's node and the center back, so fewer nodes means less traffic between machines,
and it is what Ray itself does for a placement group. "spread" (Ray's SPREAD) puts them
on as many nodes as possible: a lost node then costs fewer replicas, and replicas that
are bound by CPU or memory bandwidth get a machine each.

resources.replicas_per_actor = 0 (auto, the default) is made explicit by the driver for
the cluster it runs on (resolve_packing): with more replicas than CPUs on one node, one
actor per replica only queues them for the cores and adds a Ray call per replica per
round, while one actor stepping all of them with batched kernels over every core is
faster (measured in docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from coordinator.groups import layout
from foundation.config import Config
from foundation.errors import WideValleyError

STRATEGIES = {"compact": "PACK", "spread": "SPREAD"}
# Plain Sequentials that replicas/packed_forward.py steps with batched kernels; other
# models would pack under vmap, whose batching rules cost more than they save on CPU.
AUTO_PACKED_ARCHS = ("mlp", "cnn1d")


class ResourceError(WideValleyError, RuntimeError):
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


def resolve_packing(config: Config, nodes: list[dict[str, Any]]) -> Config:
    """`config` with resources.replicas_per_actor = 0 (auto) made explicit for a cluster
    whose ray.nodes() are `nodes`: all replicas in one actor on a one-node CPU cluster
    with more replicas than CPUs, for a model in AUTO_PACKED_ARCHS; else one per actor."""
    res, y = config.resources, config.algorithm.replicas
    if res.replicas_per_actor:
        return config
    cpu_nodes = [n for n in nodes if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    packs = (
        len(cpu_nodes) == 1
        and y > cpu_nodes[0]["Resources"]["CPU"]
        and not (res.gpus_per_replica or res.cpus_per_replica)
        and config.model.arch in AUTO_PACKED_ARCHS
    )
    resolved = dataclasses.replace(res, replicas_per_actor=y if packs else 1)
    return dataclasses.replace(config, resources=resolved)
