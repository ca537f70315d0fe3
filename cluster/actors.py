"""Replica actors on Ray: a placement group, one actor per unit, one wait per call.

This is the only place that turns Replica (a plain class), or PackedReplicas (p
replicas stepped together on one device), into an actor. Following Ray Train's worker
group: every .remote() first, then one wait over all of them with a timeout; if
startup fails, whatever was started is killed before the error goes up.

Every call to the units (a round, an evaluation, the states for a checkpoint, loading
states, the center's state) treats a dead actor, a lost node, a unit past the timeout
and an exception in the replica's code (the user's model, loss, data) the same way:
the unit is killed and counted lost. A round reports its lost
replicas as ReplicaLost outcomes; any other call raises ReplicasLost, and the
Coordinator restarts those replicas from the center and calls again. A restarted unit
goes into its placement-group bundle, which Ray moves to a surviving node when its node
is gone; when no node has room for it within resources.restart_timeout_s, the run
stops with one line (CapacityError).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.resources import STRATEGIES, unit_bundles
from coordinator.groups import (
    CenterView,
    Plan,
    ReplicaLost,
    ReplicasLost,
    RoundOutcome,
    Rounds,
    StartLoss,
    as_list,
    chained,
    layout,
    locate,
    lost_chain,
    unpack,
)
from foundation.config import Config
from foundation.errors import WideValleyError
from foundation.parts import Parts
from replicas.chain import Chaining
from replicas.packed import PackedReplicas
from replicas.replica import Replica

STARTUP_TIMEOUT_S = 300.0
RESTART_PAUSE_S = 1.0  # between tries to start a lost unit again
INLINE_BYTES = 64 * 1024  # below Ray's 100 KiB limit for arguments inlined in the task

Outcome = Any  # a unit's result, or a ReplicaLost


class CapacityError(WideValleyError, RuntimeError):
    """A lost replica could not be started again: no node had room for it in time."""


class NodeAware:
    """Mixed into every replica class made an actor here: where the actor runs."""

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


_actor_classes: dict[tuple[type, ...], type] = {}


def actor_class(cls: type, *mixins: type) -> type:
    """`cls` with NodeAware, Chaining and `mixins` mixed in (one class per combination,
    so Ray exports each once)."""
    key = (cls, *mixins)
    if key not in _actor_classes:
        _actor_classes[key] = type(cls.__name__, (NodeAware, Chaining, *mixins, cls), {})
    return _actor_classes[key]


class RayReplicaGroup:
    """The replicas of one run as Ray actors in one placement group.

    `placement` = (group, first bundle index) uses bundles that someone else reserved,
    e.g. a Tune trial that holds [coordinator, unit bundles…] at once; otherwise the
    group reserves its bundles itself (compact or spread: cluster/resources.py) and
    releases them at shutdown.
    """

    mixins: tuple[type, ...] = ()  # mixed into every unit's actor class (cluster/collective.py)

    def __init__(
        self,
        config: Config,
        replica_cls: type[Replica] = Replica,
        placement: tuple[PlacementGroup, int] | None = None,
        parts: Parts | None = None,
    ) -> None:
        self.config = config
        # Given parts (the Python API's objects) go to the object store once; None: each
        # replica resolves the config's names (import paths) on its own node.
        self.parts = None if parts is None else ray.put(parts)
        self.replica_cls = replica_cls  # tests pass a subclass that injects faults
        self.units_of = layout(config)
        self.packed = config.resources.per_actor() > 1
        if placement is None:
            bundles = unit_bundles(config, ray.cluster_resources())
            strategy = STRATEGIES[config.resources.placement]
            self.pg, self.first_bundle, self.owns_pg = placement_group(bundles, strategy), 0, True
        else:
            (self.pg, self.first_bundle), self.owns_pg = placement, False
        self.actors: list[Any] = []
        self.nodes: list[str] = [""] * len(self.units_of)
        self.lost: set[int] = set()  # units whose actor is gone
        self.start_losses: list[StartLoss] = []
        self.given: dict[int, dict[int, dict[str, Any]]] = {}  # see replace()
        try:
            ray.get(self.pg.ready(), timeout=STARTUP_TIMEOUT_S)
            self.actors = [self._start(u) for u in range(len(self.units_of))]
            models = self._await_start()
        except BaseException:
            self.shutdown()
            raise
        self.size, self.model = config.algorithm.replicas, models[0]
        self.num_params: int = self.model["num_params"]

    def _await_start(self) -> list[dict[str, Any]]:
        """Every unit's model (Replica.ready) once it runs. A unit that dies while
        starting (its node lost, its process killed) is started again in its bundle, as a
        lost replica is, and noted in start_losses: a node may die at any moment."""
        refs = [a.ready.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
        models = []
        for u, ref in enumerate(refs):
            try:  # a unit still starting after the wait is a timeout, as before
                models.append(ray.get(ref, timeout=0))
                self.nodes[u] = ray.get(self.actors[u].node_id.remote(), timeout=STARTUP_TIMEOUT_S)
            except ray.exceptions.RayActorError as err:
                ray.kill(self.actors[u])
                reason = f"lost while starting: actor died ({type(err).__name__})"
                models.append(self._restart_unit(u))
                self.start_losses.append(StartLoss(self.units_of[u], reason, self.nodes[u]))
        return models

    def _start(self, u: int) -> Any:
        bundle = self.pg.bundle_specs[self.first_bundle + u]
        gpus, cpus = bundle.get("GPU", 0.0), bundle.get("CPU", 0.0)
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=self.first_bundle + u
        )
        device, threads = ("cuda" if gpus else "cpu"), max(1, int(cpus))
        cls = PackedReplicas if self.packed else self.replica_cls
        actor: Any = ray.remote(actor_class(cls, *self.mixins)).options(
            num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy
        )
        first = self.units_of[u] if self.packed else self.units_of[u][0]
        return actor.remote(first, self.config, device, threads, parts=self.parts)

    # ---- one call to every unit --------------------------------------------------------

    def _call(
        self, method: Callable[[int, Any], Any], timeout: float, units: list[int] | None = None
    ) -> list[Outcome]:
        """`method(u, actor)` → an ObjectRef for each unit (all of them by default), one
        wait; the dead and the late come back as ReplicaLost (and are killed)."""
        units = list(range(len(self.actors))) if units is None else units
        refs = [method(u, self.actors[u]) for u in units]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out: list[Outcome] = []
        for u, ref in zip(units, refs, strict=True):
            if ref in pending:
                out.append(self._lose(u, f"no result within {timeout:g} s"))
                continue
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as err:  # dead actor, lost node, unavailable
                out.append(self._lose(u, f"actor died ({type(err).__name__})"))
            except ray.exceptions.RayTaskError as err:  # the replica's code raised
                # A fresh actor from the center, as for a dead one: the raising one may
                # hold half-stepped weights. One that raises every time stops the run
                # after MAX_CONSECUTIVE_FAILURES rounds (coordinator/failures.py).
                out.append(self._lose(u, f"raised {_summary(err)}"))
        return out

    def _lose(self, u: int, reason: str) -> ReplicaLost:
        ray.kill(self.actors[u])  # a hung actor must not come back and write later
        self.lost.add(u)
        node = self.nodes[u] if u < len(self.nodes) else ""
        if node and not _node_alive(node):
            reason = f"its node {node[:12]} was lost; {reason}"
        return ReplicaLost(reason, node)

    def _all_or_raise(self, outcomes: list[Outcome], units: list[int] | None = None) -> list[Any]:
        """The results of `units` (all, by default), or ReplicasLost naming every replica
        of every lost unit."""
        units = list(range(len(outcomes))) if units is None else units
        lost = {
            a: outcome
            for u, outcome in zip(units, outcomes, strict=True)
            if isinstance(outcome, ReplicaLost)
            for a in self.units_of[u]
        }
        if lost:
            raise ReplicasLost(lost)
        return outcomes

    # ---- the ReplicaGroup interface --------------------------------------------------

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        self.given.clear()  # the states replace() loaded are the units' own from here on
        shared = self._share(center)
        outcomes = self._call(
            lambda u, a: a.round.remote(shared, gamma, rho), self.config.train.round_timeout_s
        )
        out: list[RoundOutcome] = []
        for u, outcome in enumerate(outcomes):
            lost = isinstance(outcome, ReplicaLost)
            out += [outcome] * len(self.units_of[u]) if lost else unpack(outcome, self.packed)
        return out

    @property
    def chains(self) -> bool:
        """Whether one unit holds every replica, and so can form the center itself."""
        return len(self.units_of) == 1

    def run_rounds(self, center: CenterView, plan: Plan, budget_s: float) -> Rounds:
        if len(plan) == 1 or not self.chains:
            (gamma, rho), began = plan[0], time.perf_counter()
            return Rounds.alone(self.run_round(center.sent, center.pull_gamma(gamma), rho), began)
        self.given.clear()
        # The chain ends with the first round past the budget: allow one round beyond it.
        timeout = budget_s + self.config.train.round_timeout_s
        state = center.state_dict()
        [outcome] = self._call(lambda u, a: a.rounds.remote(state, plan, budget_s), timeout)
        if isinstance(outcome, ReplicaLost):
            return lost_chain(outcome, self.size)
        return chained(outcome, self.packed)

    @staticmethod
    def _share(center: np.ndarray | None) -> Any:
        """A large center is put once and every replica reads that one object-store copy;
        a small one (under Ray's inline limit) rides inside each call, which saves the
        object-store round trip that dominates the coupling cost of small models."""
        if center is None or center.nbytes < INLINE_BYTES:
            return center
        return ray.put(center)

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        ref = ray.put(center)
        timeout = self.config.train.round_timeout_s
        results = self._all_or_raise(
            self._call(lambda u, a: a.evaluate.remote(ref if u == 0 else None), timeout)
        )
        return [r for result in results for r in as_list(result, self.packed)]

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        timeout = self.config.train.round_timeout_s
        [state] = self._all_or_raise(
            self._call(lambda u, a: a.center_state.remote(center), timeout, units=[0]), [0]
        )
        return dict(state)

    def states(self) -> list[dict[str, Any]]:
        timeout = self.config.train.round_timeout_s
        results = self._all_or_raise(self._call(lambda u, a: a.state_dict.remote(), timeout))
        return [s for result in results for s in as_list(result, self.packed)]

    def load_states(self, states: list[dict[str, Any]]) -> None:
        def load(u: int, actor: Any) -> Any:
            mine = [states[i] for i in self.units_of[u]]
            return actor.load_state_dict.remote(mine if self.packed else mine[0])

        self._all_or_raise(self._call(load, STARTUP_TIMEOUT_S))

    def replace(self, index: int, state: dict[str, Any]) -> None:
        """Load `state` into replica `index`, its unit started anew first if lost. A unit
        that dies while it loads (its new node lost too) is started again and given every
        state handed to it since the last round: the members of a packed unit come one
        call each, and a new actor has lost what the earlier calls loaded."""
        u, row = locate(index, self.config.resources.per_actor())
        if u in self.lost:  # its bundle is free again (Ray moves it off a lost node)
            self._restart_unit(u)
            self.given[u] = {}
        mine = self.given.setdefault(u, {})
        mine[row] = state
        timeout = self.config.resources.restart_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._load(u, mine if self.packed else {row: state})
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() >= deadline:
                    raise self._no_room(u, timeout) from None
                ray.kill(self.actors[u])
                self._restart_unit(u)

    def _load(self, u: int, states: dict[int, dict[str, Any]]) -> None:
        actor = self.actors[u]
        refs = [
            actor.load_member_state.remote(row, state)
            if self.packed
            else actor.load_state_dict.remote(state)
            for row, state in states.items()
        ]
        ray.get(refs, timeout=STARTUP_TIMEOUT_S)

    def _restart_unit(self, u: int) -> dict[str, Any]:
        """A new actor for unit u in its bundle. Right after a node dies Ray may still
        place the bundle, and so the new actor, on that node (until the node is marked
        dead and the bundle moves): such an actor dies before it runs, and is started
        again, until resources.restart_timeout_s is spent."""
        timeout = self.config.resources.restart_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            self.actors[u] = self._start(u)
            try:
                left = max(0.0, deadline - time.monotonic())
                model = ray.get(self.actors[u].ready.remote(), timeout=left)
                self.nodes[u] = ray.get(self.actors[u].node_id.remote(), timeout=left or None)
                break
            except ray.exceptions.RayActorError:  # placed on the dying node
                if time.monotonic() >= deadline:
                    raise self._no_room(u, timeout) from None
                time.sleep(RESTART_PAUSE_S)
            except ray.exceptions.GetTimeoutError:
                ray.kill(self.actors[u])
                raise self._no_room(u, timeout) from None
        self.lost.discard(u)
        return dict(model)

    def _no_room(self, u: int, timeout: float) -> CapacityError:
        return CapacityError(
            f"replicas {self.units_of[u]} could not be started again: no node had room "
            f"for them within resources.restart_timeout_s = {timeout:g} s"
        )

    def node_of(self, index: int) -> str:
        u, _ = locate(index, self.config.resources.per_actor())
        return self.nodes[u] if u < len(self.nodes) else ""

    def pids(self) -> list[int]:
        pids: list[int] = ray.get([a.pid.remote() for a in self.actors])
        return pids

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.owns_pg:  # once: a second shutdown finds the group already gone
            self.owns_pg = False
            remove_placement_group(self.pg)


def _summary(err: ray.exceptions.RayTaskError) -> str:
    """What a replica raised, in one line: its class and the first line of its message
    (Ray's own text carries the remote traceback)."""
    cause = err.cause if err.cause is not None else err
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"[:300]


def _node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())
