"""Where the replicas live, behind one narrow interface the Coordinator talks to.

LocalGroup keeps them as plain objects in this process (tests, debugging);
cluster/actors.py's RayReplicaGroup keeps them as Ray actors. Either way replicas come
in units: one Replica, or a PackedReplicas of p of them (resources.replicas_per_actor)
that steps together. A replica that dies, hangs past the round timeout or raises comes
back as ReplicaLost, never as weights: the Coordinator decides what to do about it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from foundation.config import Config
from foundation.parts import Parts
from replicas.chain import Chain, FormedRound, run_chain
from replicas.packed import PackedReplicas
from replicas.replica import Replica, RoundStats


@dataclass(frozen=True)
class ReplicaLost:
    reason: str
    node: str = ""
    """The node the replica ran on, when the group knows it (a lost node loses them all)."""


@dataclass(frozen=True)
class StartLoss:
    """Replicas whose unit died while the group started, and was started again."""

    replicas: list[int]
    reason: str
    now_on: str = ""
    """The node the unit runs on now."""


class ReplicasLost(RuntimeError):
    """Replicas were lost during a call other than a round (an evaluation, a checkpoint):
    the Coordinator restarts them from the center and makes the call again."""

    def __init__(self, lost: dict[int, ReplicaLost]) -> None:
        super().__init__(f"replicas {sorted(lost)} lost: {next(iter(lost.values())).reason}")
        self.lost = lost


RoundOutcome = tuple[np.ndarray, RoundStats] | ReplicaLost

KEPT = np.empty(0, dtype=np.float32)
"""A round outcome's weights when they stayed in the unit (the collective transport, the
rounds a chain formed itself)."""

Plan = list[tuple[float, float]]
"""(γ, ρ) of each round a call may run, in order."""


@dataclass(frozen=True)
class Rounds:
    """What one call to a group ran: rounds whose center a unit formed itself (a chain,
    replicas/chain.py; none where the group ran one round), then the last round's
    outcomes, one per replica, for the coordinator to form."""

    formed: list[FormedRound]
    center: dict[str, Any] | None
    """The center rule's state after the formed rounds (None: none was formed)."""
    last: list[RoundOutcome]
    last_seconds: float

    @staticmethod
    def alone(outcomes: list[RoundOutcome], began: float) -> Rounds:
        """One round run alone (by a group that cannot chain, or with a plan of one: to
        send the center's whole rule state for one round would only cost), begun at
        time.perf_counter() `began`."""
        return Rounds([], None, outcomes, time.perf_counter() - began)


class CenterView(Protocol):
    """What a group reads of the coordinator's center (coordinator/center_keeper.py)."""

    @property
    def sent(self) -> np.ndarray | None: ...

    def pull_gamma(self, gamma: float) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...


def lost_chain(lost: ReplicaLost, size: int) -> Rounds:
    """A chain whose unit died: its rounds died with it, and every replica is lost."""
    return Rounds([], None, [lost] * size, 0.0)


class ReplicaGroup(Protocol):
    size: int
    num_params: int
    model: dict[str, Any]
    """What identifies the model (replicas/replica.py, model_identity): checkpoints
    record it, and a resume with another model is refused."""
    start_losses: list[StartLoss]
    """Units lost while the group started (and started again), for the run's events."""

    def run_rounds(self, center: CenterView, plan: Plan, budget_s: float) -> Rounds:
        """The rounds of `plan` from `center`, as many as one call runs: all of them
        (ending early past `budget_s`) where one unit holds every replica and can form
        the center itself (replicas/chain.py), else the first alone."""
        ...

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]: ...

    def states(self) -> list[dict[str, Any]]: ...

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        """The center as a model's state_dict, BatchNorm statistics recomputed."""
        ...

    def load_states(self, states: list[dict[str, Any]]) -> None: ...

    def replace(self, index: int, state: dict[str, Any]) -> None:
        """Give replica `index` this state; a lost replica is started anew first."""
        ...

    def node_of(self, index: int) -> str:
        """Where replica `index` runs (a Ray node id, or "local")."""
        ...

    def shutdown(self) -> None: ...


def delivered(outcome: RoundOutcome) -> tuple[np.ndarray, RoundStats]:
    """The (weights, stats) of a replica that was not lost this round."""
    assert not isinstance(outcome, ReplicaLost)
    return outcome


def layout(config: Config) -> list[list[int]]:
    """Replica indices per unit: [[0..p-1], [p..2p-1], …]; the last unit may be smaller."""
    y, p = config.algorithm.replicas, config.resources.per_actor()
    return [list(range(start, min(start + p, y))) for start in range(0, y, p)]


def locate(index: int, per_unit: int) -> tuple[int, int]:
    """Replica `index` → (its unit, its row in the unit) with `per_unit` replicas a unit."""
    return index // per_unit, index % per_unit


def unpack(result: Any, packed: bool) -> list[tuple[np.ndarray, RoundStats]]:
    """A unit's round result as one (weights, stats) per replica, in index order."""
    if not packed:
        return [result]
    block, stats = result
    return [(block[row], s) for row, s in enumerate(stats)]


def chained(chain: Chain, packed: bool, in_process: bool = False) -> Rounds:
    """A unit's chain as Rounds; `in_process`: the last weights are the unit's own
    buffers, which it goes on training, so they are copied."""
    last = unpack(chain.last, packed)
    outcomes: list[RoundOutcome] = [(w.copy(), s) for w, s in last] if in_process else list(last)
    return Rounds(chain.formed, chain.center, outcomes, chain.last_seconds)


def as_list(result: Any, packed: bool) -> list[Any]:
    return list(result) if packed else [result]


class LocalGroup:
    """Replicas as plain objects in this process, one unit after another."""

    def __init__(self, config: Config, parts: Parts | None = None) -> None:
        self.config = config
        self.parts = parts  # None: each replica resolves the config's names itself
        self.units_of = layout(config)
        self.packed = config.resources.per_actor() > 1
        self.units = [self._new_unit(u) for u in range(len(self.units_of))]
        self.size = config.algorithm.replicas
        self.model: dict[str, Any] = self.units[0].ready()
        self.num_params: int = self.model["num_params"]
        self.lost_units: set[int] = set()
        self.start_losses: list[StartLoss] = []

    def _new_unit(self, u: int) -> Any:
        if self.packed:
            return PackedReplicas(self.units_of[u], self.config, parts=self.parts)
        return Replica(self.units_of[u][0], self.config, parts=self.parts)

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        """One round of every unit, one after another."""
        out: list[RoundOutcome] = []
        for u, unit in enumerate(self.units):
            try:
                results = unpack(unit.round(center, gamma, rho), self.packed)
                out += [(w.copy(), s) for w, s in results]  # units keep training their buffers
            except Exception as err:  # in-process, a raising replica stands for a dead one
                self.lost_units.add(u)
                out += [ReplicaLost(f"{type(err).__name__}: {err}")] * len(self.units_of[u])
        return out

    def run_rounds(self, center: CenterView, plan: Plan, budget_s: float) -> Rounds:
        if len(plan) == 1 or len(self.units) > 1:
            (gamma, rho), began = plan[0], time.perf_counter()
            return Rounds.alone(self.run_round(center.sent, center.pull_gamma(gamma), rho), began)
        try:  # a copy: the unit changes the center it gets in place (EASGD, DiLoCo)
            chain = run_chain(self.units[0], copy.deepcopy(center.state_dict()), plan, budget_s)
        except Exception as err:
            self.lost_units.add(0)
            return lost_chain(ReplicaLost(f"{type(err).__name__}: {err}"), self.size)
        return chained(chain, self.packed, in_process=True)

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        results = []
        for u, unit in enumerate(self.units):
            results += as_list(unit.evaluate(center if u == 0 else None), self.packed)
        return results

    def states(self) -> list[dict[str, Any]]:
        return [s for unit in self.units for s in as_list(unit.state_dict(), self.packed)]

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        state: dict[str, Any] = self.units[0].center_state(center)
        return state

    def load_states(self, states: list[dict[str, Any]]) -> None:
        for u, unit in enumerate(self.units):
            mine = [states[i] for i in self.units_of[u]]
            unit.load_state_dict(mine if self.packed else mine[0])

    def replace(self, index: int, state: dict[str, Any]) -> None:
        u, row = locate(index, self.config.resources.per_actor())
        if u in self.lost_units:
            self.units[u] = self._new_unit(u)
            self.lost_units.discard(u)
        if self.packed:
            self.units[u].load_member_state(row, state)
        else:
            self.units[u].load_state_dict(state)

    def node_of(self, index: int) -> str:
        return "local"

    @property
    def replicas(self) -> list[Replica]:
        """Every Replica object, in index order (packed units expose their members)."""
        return [m for unit in self.units for m in (unit.members if self.packed else [unit])]

    def shutdown(self) -> None:
        self.units.clear()
