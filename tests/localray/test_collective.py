"""Tier 3: resources.transport = "collective" on a real local Ray — the replicas form the
center with an all-reduce (ray.util.collective, gloo) and it agrees with the object-store
transport, for every rule that keeps a center, packed or not, and through a lost replica.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.cloudpickle
import torch
from torch import Tensor

from cluster.actors import RayReplicaGroup
from cluster.collective import CollectiveMember, CollectiveReplicaGroup, replica_group_class
from coordinator.center_keeper import GatheredCenter
from coordinator.coordinator import Coordinator
from coordinator.groups import ReplicaLost
from foundation.config import Config, load_config
from jobs import CONFIG_DIR

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors can't import us
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


UNIT_ROUNDOFF = 2.0**-24


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
    momentum (packed: 2 replicas a unit); 4 replicas, 8 rounds (rSGD's and Parle's mean is
    the smoke test's).

    Each round, the object store's rule (coordinator/center_keeper.py) is applied to the very
    weights the units all-reduced, from the units' own center state before the round, and
    must give the units' new center. A whole run is not compared: the two transports sum
    in another order (gloo's ring against row by row), and that last-bit difference, fed
    back through K local steps a round, grows at a rate that depends on the CPU's kernels
    (1e-7 after 8 rounds on one box, 1.6e-4 on another). One round is well conditioned:
    summing y rows in any order is off by at most (y − 1)·u·Σ_a|w^a| per element (u the
    unit roundoff), and the rule's few further operations (mean, difference, momentum,
    step; each gain ≤ 1 + outer_lr·(1 + μ) ≤ 2 here) add a few u·|w| each. The bound
    below, 2·(y + 6)·u·max|w|, holds that with room; a wrong rule is off by far more."""
    small = ["algorithm.replicas=4", "train.rounds=8", "train.eval_every=4",
             "train.checkpoint_every=4", f"run.storage={tmp_path}", f"data.root={data_root}",
             "resources.transport=collective"]  # fmt: skip
    config_ = load_config(CONFIG_DIR / config, [*small, *sets])
    algo = config_.algorithm
    coordinator = Coordinator(config_, replica_group_class(config_))
    gaps, worst = [], 0.0
    try:
        while not coordinator.done:
            before = coordinator.rule.state_dict()
            gamma = coordinator.gamma.value()
            coordinator.step()
            reduced = coordinator.center
            assert reduced is not None
            p = coordinator.group.num_params
            weights = [torch.as_tensor(s["flat"]) for s in coordinator.group.states()]
            expected = GatheredCenter(algo.kind, algo.outer_lr, algo.outer_momentum)
            expected.load_state_dict(before)
            expected.update(weights, gamma, algo.lr, p)
            assert expected.value is not None
            scale = max(float(w[:p].abs().max()) for w in [*weights, reduced])
            bound = 2 * (len(weights) + 6) * UNIT_ROUNDOFF * scale
            gap = float((expected.value[:p] - reduced[:p]).abs().max())
            gaps.append(gap)
            worst = max(worst, gap / bound)
    finally:
        coordinator.shutdown()
    assert len(gaps) == 8 and worst <= 1.0, (gaps, worst)


def test_a_killed_replica_is_survived_as_with_the_object_store(
    tmp_path: Path, data_root: Path
) -> None:
    """ray.kill of a unit before round 6: left out of that round's sum, restarted from the
    center on the survivors' group, the group formed again with it. Both transports make
    the same restart, so the centers still agree. Two replicas: every sum then has at
    most two terms, and a + b is the same in either order, so the two transports agree
    by construction on any CPU (with three, gloo's ring sums in another order than the
    coordinator, and that last-bit difference grows through the rounds)."""
    sets = ["algorithm.replicas=2", "train.rounds=10", "train.eval_every=5"]
    (gathered, lost_a), (reduced, lost_b) = both(
        CONFIG_DIR / "smoke.toml", tmp_path, data_root, *sets, kill_at=5
    )
    assert (
        [(e["round"], e["replica"]) for e in lost_b]
        == [(6, 0)]
        == [(e["round"], e["replica"]) for e in lost_a]
    )
    assert np.abs(gathered - reduced).max() <= TOLERANCE


class DiesInAllReduce(CollectiveMember):
    """Replica 1's process exits in its third all-reduce, once the others are inside it
    (they wait for its part): what a SIGKILL at that moment does. Once per run."""

    def _all_reduce(self, total: Tensor) -> None:
        self.reductions = getattr(self, "reductions", 0) + 1
        replica: Any = self  # mixed into Replica (cluster/actors.py, actor_class)
        marker = Path(replica.config.run.storage) / "died"
        if replica.index == 1 and self.reductions == 3 and not marker.exists():
            marker.touch()
            time.sleep(1.0)
            os._exit(1)
        super()._all_reduce(total)


class DyingGroup(CollectiveReplicaGroup):
    mixins = (DiesInAllReduce,)


def test_a_replica_lost_inside_the_all_reduce_restarts_and_the_run_goes_on(
    tmp_path: Path, data_root: Path
) -> None:
    """It ended the run at once: `RuntimeError: [gloo/transport/tcp/pair.cc] Read error …
    Connection reset by peer`. Now the survivors sum again without it, and it restarts
    from their center, as a replica lost in its local steps does."""
    sets = [f"run.storage={tmp_path}", f"data.root={data_root}", "algorithm.replicas=3",
            "resources.transport=collective", "resources.replicas_per_actor=1",
            "resources.cpus_per_replica=0.5", "train.rounds=4", "train.eval_every=4"]  # fmt: skip
    coordinator = Coordinator(load_config(CONFIG_DIR / "smoke.toml", sets), DyingGroup)
    try:
        while not coordinator.done:
            coordinator.step()
        summary = coordinator.finish()
        events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
        center = coordinator.center
    finally:
        coordinator.shutdown()
    assert (tmp_path / "died").exists() and summary["rounds"] == 4
    assert [(e["round"], e["replica"]) for e in events] == [(3, 1)], events
    assert center is not None and bool(torch.isfinite(center).all())


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
        assert list(distances) == [0, 1]
        assert all(isinstance(d, float) and d > 0 for d in distances.values())
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
