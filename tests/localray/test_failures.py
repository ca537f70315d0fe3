"""Tier 3: replica actors killed, SIGKILLed, hung and diverging on a real local Ray."""

import functools
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.cloudpickle

from cluster.actors import RayReplicaGroup
from coordinator.coordinator import Coordinator
from coordinator.failures import DivergenceError
from replicas.replica import Replica, RoundStats
from tests.support import ConfigFactory

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
# The fault-injecting replicas below are defined here, in a module the actor processes
# cannot import: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class HangingReplica(Replica):
    """Replica 1 hangs in the round in which the flag file exists (once: it eats the flag)."""

    flag = ""

    def round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> tuple[np.ndarray, RoundStats]:
        if self.index == 1 and os.path.exists(self.flag):
            os.unlink(self.flag)
            time.sleep(3600)
        return super().round(center, gamma, rho)


class NanReplica(Replica):
    """Replica 0 returns NaN weights in its third round."""

    def round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> tuple[np.ndarray, RoundStats]:
        self.calls = getattr(self, "calls", 0) + 1
        weights, stats = super().round(center, gamma, rho)
        if self.index == 0 and self.calls == 3:
            return np.full_like(weights, np.nan), RoundStats(math.nan, 0.0, 0.0, False)
        return weights, stats


def restarted(coordinator: Coordinator) -> list[tuple[int, int, str]]:
    events = coordinator.run.events()
    return [
        (e["round"], e["replica"], e["reason"]) for e in events if e["event"] == "replica_restarted"
    ]


def run_with(coordinator: Coordinator, between_rounds: dict[int, object]) -> dict[str, Any]:
    try:
        while not coordinator.done:
            action = between_rounds.get(coordinator.round)
            if callable(action):
                action()
            coordinator.step()
        return coordinator.finish()
    finally:
        coordinator.shutdown()


def test_a_replica_killed_with_ray_kill_is_replaced(make_config: ConfigFactory) -> None:
    coordinator = Coordinator(make_config("train.rounds=5", name="kill"), RayReplicaGroup)
    group = coordinator.group
    assert isinstance(group, RayReplicaGroup)
    summary = run_with(coordinator, {2: lambda: ray.kill(group.actors[1])})
    assert summary["rounds"] == 5
    [(round_, replica, reason)] = restarted(coordinator)
    assert (round_, replica) == (3, 1) and "actor died" in reason


def test_a_replica_process_killed_with_sigkill_is_replaced(make_config: ConfigFactory) -> None:
    coordinator = Coordinator(make_config("train.rounds=5", name="sigkill"), RayReplicaGroup)
    group = coordinator.group
    assert isinstance(group, RayReplicaGroup)
    old_pids = group.pids()
    summary = run_with(coordinator, {3: lambda: os.kill(old_pids[0], signal.SIGKILL)})
    assert summary["rounds"] == 5
    assert [(r, a) for r, a, _ in restarted(coordinator)] == [(4, 0)]


def test_a_hung_replica_is_replaced_after_the_round_timeout(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "hang-now"
    cls = type("Hanging", (HangingReplica,), {"flag": str(flag)})
    config = make_config("train.rounds=4", "train.round_timeout_s=5", name="hang")
    coordinator = Coordinator(config, functools.partial(RayReplicaGroup, replica_cls=cls))
    started = time.perf_counter()
    summary = run_with(coordinator, {1: flag.touch})
    assert summary["rounds"] == 4 and time.perf_counter() - started < 120
    [(round_, replica, reason)] = restarted(coordinator)
    assert (round_, replica) == (2, 1) and "no result within 5 s" in reason


def test_nan_at_a_chosen_round_stops_or_restarts(make_config: ConfigFactory) -> None:
    group = functools.partial(RayReplicaGroup, replica_cls=NanReplica)
    stopping = Coordinator(make_config("train.rounds=5", name="nan-stop"), group)
    with pytest.raises(DivergenceError, match="replica 0 diverged in round 3"):
        run_with(stopping, {})
    restarting = Coordinator(
        make_config("train.rounds=5", "train.on_divergence=restart", name="nan-go"), group
    )
    summary = run_with(restarting, {})
    assert summary["rounds"] == 5
    [(round_, replica, reason)] = restarted(restarting)
    assert (round_, replica) == (3, 0) and reason.startswith("diverged")
