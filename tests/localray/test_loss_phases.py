"""Tier 3: a replica's process dies at each phase of a run — while the group starts,
inside a round, while a lost replica is being restarted, while a checkpoint is taken —
and the run ends as an uninterrupted one does, the loss in events.jsonl.

A process that exits at once is what the driver sees of a lost node: Ray reports the
actor died (RayActorError) at the next call. The node-level version of the start-up phase
runs on a real multi-node cluster in tests/e2e/test_multinode.py; the chaos benchmark
(benchmarks/chaos_node_loss.py) kills real nodes at seeded moments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.cloudpickle

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from replicas.replica import Replica, RoundStats
from tests.support import ConfigFactory

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors can't import us


class DiesOnce(Replica):
    """Replica 1's process exits the first time it reaches one of `phases` (a marker
    file in the run's storage makes each happen once across restarts)."""

    phases: tuple[str, ...] = ()

    def _maybe_die(self, phase: str) -> None:
        marker = Path(self.config.run.storage) / f"died-{phase}"
        if self.index == 1 and phase in self.phases and not marker.exists():
            marker.touch()
            os._exit(1)

    def ready(self) -> dict[str, Any]:
        self._maybe_die("start")
        return super().ready()

    def round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> tuple[np.ndarray, RoundStats]:
        if getattr(self, "rounds_run", 0) == 1:  # its second round
            self._maybe_die("round")
        self.rounds_run = getattr(self, "rounds_run", 0) + 1
        return super().round(center, gamma, rho)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._maybe_die("restart")
        super().load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        self._maybe_die("checkpoint")
        return super().state_dict()


def dying_at(*phases: str) -> type[DiesOnce]:
    return type("DiesOnce", (DiesOnce,), {"phases": phases})


def run(coordinator: Coordinator) -> dict[str, Any]:
    try:
        while not coordinator.done:
            coordinator.step()
        return coordinator.finish()
    finally:
        coordinator.shutdown()


SETS = ("train.rounds=4", "train.checkpoint_every=2", "resources.replicas_per_actor=1")


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        (("start",), [(0, 1, "lost while starting")]),
        (("round", "restart"), [(2, 1, "lost: ")]),  # in a round, then in its restart
        (("checkpoint",), [(2, 1, "lost: ")]),
    ],
    ids=["while-starting", "in-a-round-then-while-restarting", "at-a-checkpoint"],
)
def test_a_replica_lost_at_any_phase_is_restarted_and_the_run_ends(
    make_config: ConfigFactory, phases: tuple[str, ...],
    expected: list[tuple[int, int, str]],
) -> None:  # fmt: skip
    config = make_config(*SETS, name="-".join(phases))
    group = lambda c: RayReplicaGroup(c, replica_cls=dying_at(*phases))  # noqa: E731
    coordinator = Coordinator(config, group)
    summary = run(coordinator)
    assert summary["rounds"] == 4
    died = sorted(p.name for p in Path(config.run.storage).glob("died-*"))
    assert died == sorted(f"died-{p}" for p in phases), died  # each phase was reached
    events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    assert [(e["round"], e["replica"]) for e in events] == [r[:2] for r in expected], events
    assert all(e["reason"].startswith(r[2]) for e, r in zip(events, expected, strict=True))
    if phases == ("start",):  # started again before anything trained: the same run
        reference = run(Coordinator(make_config(*SETS, name="ref"), RayReplicaGroup))
        assert summary["center_sha256"] == reference["center_sha256"]
