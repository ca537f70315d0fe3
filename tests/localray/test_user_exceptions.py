"""Tier 3: an exception in user code (the model's forward, the loss) inside a replica
actor restarts that replica from the center, as a dead one is; one that raises every
time stops the run after MAX_CONSECUTIVE_FAILURES rounds, its metrics and events kept.

Found from outside: a model whose forward raised once, in one replica, ended the run
with exit 1, no metrics.parquet, and only `start` in events.jsonl.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from coordinator.failures import MAX_CONSECUTIVE_FAILURES, RunFailed
from replicas.replica import Replica, RoundStats
from tests.support import ConfigFactory

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors can't import us


class RaisingReplica(Replica):
    """Replica 1 raises in its rounds from round 2 on: once (a marker file in the run's
    storage makes it once across restarts), or every time."""

    every_time = False

    def round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> tuple[np.ndarray, RoundStats]:
        marker = Path(self.config.run.storage) / "raised"
        if self.index == 1 and center is not None and (self.every_time or not marker.exists()):
            marker.touch()
            raise RuntimeError("a bug in forward\nsecond line of the message")
        return super().round(center, gamma, rho)


class AlwaysRaising(RaisingReplica):
    every_time = True


def coordinator(config: Any, cls: type[Replica]) -> Coordinator:
    return Coordinator(config, lambda c: RayReplicaGroup(c, replica_cls=cls))


SETS = ("train.rounds=6", "train.eval_every=3", "resources.replicas_per_actor=1")


def test_an_exception_once_restarts_the_replica_from_the_center(
    make_config: ConfigFactory,
) -> None:
    run = coordinator(make_config(*SETS, name="once"), RaisingReplica)
    try:
        while not run.done:
            run.step()
        summary = run.finish()
    finally:
        run.shutdown()
    assert summary["rounds"] == 6
    restarts = [e for e in run.run.events() if e["event"] == "replica_restarted"]
    assert [(e["round"], e["replica"]) for e in restarts] == [(2, 1)], restarts
    assert restarts[0]["reason"] == "lost: raised RuntimeError: a bug in forward"


def test_an_exception_every_time_stops_the_run_and_keeps_its_record(
    make_config: ConfigFactory,
) -> None:
    config = make_config(*SETS, name="always")
    run = coordinator(config, AlwaysRaising)
    with pytest.raises(RunFailed, match="replica 1 failed 3 rounds in a row: lost: raised Run"):
        try:
            while not run.done:
                run.step()
        finally:
            run.shutdown()
    kinds = [e["event"] for e in run.run.events()]
    assert kinds.count("replica_restarted") == MAX_CONSECUTIVE_FAILURES - 1, kinds
    assert kinds[-1] == "stopped", kinds
    rows = pq.read_table(Path(config.run.storage) / "always" / "metrics.parquet").to_pylist()
    assert {r["round"] for r in rows} == {1, 2, 3}, rows  # every round that ended
