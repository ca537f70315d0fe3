"""Where the replicas live, behind one narrow interface the Coordinator talks to.

LocalGroup keeps them as plain objects in this process (tests, debugging);
cluster/actors.py's RayReplicaGroup keeps them as Ray actors. A replica that dies,
hangs past the round timeout or raises comes back as ReplicaLost, never as weights:
the Coordinator decides what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from jobs.config import Config
from replicas.replica import Replica, RoundStats


@dataclass(frozen=True)
class ReplicaLost:
    reason: str


RoundOutcome = tuple[np.ndarray, RoundStats] | ReplicaLost


class ReplicaGroup(Protocol):
    size: int
    num_params: int

    def run_round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> list[RoundOutcome]: ...

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]: ...

    def states(self) -> list[dict[str, Any]]: ...

    def load_states(self, states: list[dict[str, Any]]) -> None: ...

    def replace(self, index: int, state: dict[str, Any]) -> None:
        """Give replica `index` this state; a lost replica is started anew first."""
        ...

    def shutdown(self) -> None: ...


class LocalGroup:
    """Replicas as plain objects in this process, stepped one after another."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.replicas = [Replica(i, config) for i in range(config.algorithm.replicas)]
        self.size = len(self.replicas)
        self.num_params = self.replicas[0].num_params
        self.lost: set[int] = set()

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        out: list[RoundOutcome] = []
        for index, replica in enumerate(self.replicas):
            try:
                weights, stats = replica.round(center, gamma, rho)
                out.append((weights.copy(), stats))  # the replica keeps training its buffer
            except Exception as err:  # in-process, a raising replica stands for a dead one
                self.lost.add(index)
                out.append(ReplicaLost(f"{type(err).__name__}: {err}"))
        return out

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        return [r.evaluate(center if i == 0 else None) for i, r in enumerate(self.replicas)]

    def states(self) -> list[dict[str, Any]]:
        return [r.state_dict() for r in self.replicas]

    def load_states(self, states: list[dict[str, Any]]) -> None:
        for replica, state in zip(self.replicas, states, strict=True):
            replica.load_state_dict(state)

    def replace(self, index: int, state: dict[str, Any]) -> None:
        if index in self.lost:
            self.replicas[index] = Replica(index, self.config)
            self.lost.discard(index)
        self.replicas[index].load_state_dict(state)

    def shutdown(self) -> None:
        self.replicas.clear()
