"""Tier 3: resources.transport = "collective" on a real local Ray — the replicas form the
center with an all-reduce (ray.util.collective, gloo) and it agrees with the object-store
transport, for every rule that keeps a center, packed or not, and through a lost replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

from cluster.actors import RayReplicaGroup
from cluster.collective import CollectiveReplicaGroup, replica_group_class
from coordinator.coordinator import Coordinator
from coordinator.groups import ReplicaLost
from foundation.config import Config, load_config
from jobs import CONFIG_DIR

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
TOLERANCE = 1e-5


def run(config: Config, kill_at: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The final center and the restarts of one run; `kill_at`: ray.kill of the first
    unit's actor before that round (the center is then read from another unit)."""
    coordinator = Coordinator(config, replica_group_class(config))
    try:
        while not coordinator.done:
            if coordinator.round == kill_at:
                ray.kill(coordinator.group.actors[0])  # type: ignore[attr-defined]
            coordinator.step()
        summary = coordinator.finish()
        assert summary["rounds"] == config.train.rounds
        center = coordinator.center
        assert center is not None
        events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
        return center.numpy().copy(), events
    finally:
        coordinator.shutdown()


def both(path: Path, tmp_path: Path, data_root: Path, *sets: str, kill_at: int | None = None) -> (
    tuple[tuple[np.ndarray, list[dict[str, Any]]], tuple[np.ndarray, list[dict[str, Any]]]]
):  # fmt: skip
    def config(transport: str) -> Config:
        base = [f"run.storage={tmp_path / transport}", f"data.root={data_root}",
                f"resources.transport={transport}"]  # fmt: skip
        return load_config(path, [*base, *sets])

    return run(config("object_store"), kill_at), run(config("collective"), kill_at)


def test_the_smoke_config_gives_the_object_store_center(tmp_path: Path, data_root: Path) -> None:
    (gathered, _), (reduced, _) = both(CONFIG_DIR / "smoke.toml", tmp_path, data_root)
    assert np.abs(gathered - reduced).max() <= TOLERANCE
    assert not np.array_equal(gathered, np.zeros_like(gathered))


@pytest.mark.parametrize(
    ("config", "sets"),
    [
        ("easgd.toml", ["scoping.kind=exponential", "scoping.gamma0=0.5", "scoping.gamma_max=2"]),
        ("diloco.toml", ["resources.replicas_per_actor=2"]),
    ],
)  # fmt: skip
def test_every_center_rule_agrees_with_the_object_store(
    tmp_path: Path, data_root: Path, config: str, sets: list[str]
) -> None:
    """EASGD's w̃ (scoped γ: both halves of the exchange), DiLoCo's θ with its outer
    momentum (packed: 2 replicas a unit); 4 replicas, 8 rounds each (rSGD's and Parle's
    mean is the smoke test's)."""
    small = ["algorithm.replicas=4", "train.rounds=8", "train.eval_every=4",
             "train.checkpoint_every=4"]  # fmt: skip
    (gathered, _), (reduced, _) = both(CONFIG_DIR / config, tmp_path, data_root, *small, *sets)
    assert np.abs(gathered - reduced).max() <= TOLERANCE


def test_a_killed_replica_is_survived_as_with_the_object_store(
    tmp_path: Path, data_root: Path
) -> None:
    """ray.kill of a unit before round 6: left out of that round's sum, restarted from the
    center on the survivors' group, the group formed again with it. Both transports make
    the same restart, so the centers still agree."""
    sets = ["algorithm.replicas=3", "train.rounds=10", "train.eval_every=5"]
    (gathered, lost_a), (reduced, lost_b) = both(
        CONFIG_DIR / "smoke.toml", tmp_path, data_root, *sets, kill_at=5
    )
    assert (
        [(e["round"], e["replica"]) for e in lost_b]
        == [(6, 0)]
        == [(e["round"], e["replica"]) for e in lost_a]
    )
    assert np.abs(gathered - reduced).max() <= TOLERANCE


def test_the_coordinator_receives_no_weights_on_ordinary_rounds(
    tmp_path: Path, data_root: Path
) -> None:
    sets = [f"run.storage={tmp_path}", f"data.root={data_root}", "resources.transport=collective"]
    config = load_config(CONFIG_DIR / "smoke.toml", sets)
    group = CollectiveReplicaGroup(config)
    try:
        outcomes = group.run_round(None, 0.01, 0.0)
        assert all(not isinstance(o, ReplicaLost) and o[0].size == 0 for o in outcomes)
        distances = group.reduce([0, 1], 0.01, 0.1, group.num_params)
        assert distances.shape == (2,) and bool((distances > 0).all())
        center = group.from_live_unit("center_value")
        weights = [torch.as_tensor(s["flat"]) for s in group.states()]
        mean = (weights[0] + weights[1]) / 2
        assert np.abs(center - mean.numpy()).max() <= TOLERANCE
    finally:
        group.shutdown()
    assert issubclass(CollectiveReplicaGroup, RayReplicaGroup)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs replicas on GPUs")
def test_nccl_on_gpus_agrees_with_the_object_store(tmp_path: Path, data_root: Path) -> None:
    sets = ["resources.gpus_per_replica=0.5"]
    (gathered, _), (reduced, _) = both(CONFIG_DIR / "smoke.toml", tmp_path, data_root, *sets)
    assert np.abs(gathered - reduced).max() <= TOLERANCE
