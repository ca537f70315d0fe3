"""The collective transport: the replicas form the center among themselves.

resources.transport = "collective". A round has two phases. First every unit runs its
K local steps toward the center it holds itself and returns only its replicas'
statistics: the coordinator sees scalars. Then the units sum the weights of the round's
good replicas with one all-reduce through ray.util.collective (gloo on CPU, NCCL when
the replicas sit on GPUs; one code path, the backend chosen by the device), and every
unit applies the same rule to the same sum (flatmath.center.CenterRule.update_from_sum),
so every unit holds the same new center: the mean, EASGD's w̃, DiLoCo's θ and its outer
momentum are all kept identically on every unit, never sent. The coordinator reads the
center from one live unit only when it needs it: an evaluation, a checkpoint, a
restart, the end (SharedCenter).

A replica lost or diverged in the first phase is left out of the sum, exactly as with
the object store. Before the next all-reduce the group is formed again from the units
alive (a new group name; torch.distributed's default group, formed for the old
members, is torn down in each). A unit that dies inside the all-reduce fails it for
everyone (gloo: "Connection reset by peer"): the others then hold the center as it was
before the round (each keeps a copy until the round's sum is in: a unit may have
finished its all-reduce before another failed), the group is formed again without the
dead unit and the survivors' weights are summed again; the dead unit's replicas are
reported lost in that round and restart from the new center, as in the first phase.
Units that hang inside it instead are killed at train.round_timeout_s; with all of
them gone, so is the center, and the run stops with one line (resubmitting resumes from
the last checkpoint).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ray.util import collective
from ray.util.collective.types import Backend
from torch import Tensor

from cluster.actors import STARTUP_TIMEOUT_S, RayReplicaGroup
from coordinator.failures import MAX_CONSECUTIVE_FAILURES
from coordinator.groups import KEPT, ReplicaLost, RoundOutcome, locate, unpack
from flatmath import coupling
from flatmath.center import OUTER, CenterRule
from foundation.config import Config
from foundation.errors import WideValleyError


class CollectiveFailed(WideValleyError, RuntimeError):
    """The all-reduce itself did not complete (a unit died or hung inside it)."""


class CollectiveMember:
    """Mixed into a unit's actor class (cluster/actors.py): its side of the transport."""

    _group: str | None = None

    def setup_center(self, kind: str, outer_lr: float, outer_momentum: float) -> None:
        self._rule = CenterRule(kind, outer_lr, outer_momentum)
        self._kept: list[np.ndarray] = []

    def join(self, name: str, world: int, rank: int) -> None:
        self.leave()
        backend = Backend("nccl" if self._device().type == "cuda" else "gloo")
        collective.init_collective_group(world, rank, backend=backend, group_name=name)
        self._group = name

    def leave(self) -> None:
        if self._group is not None:
            collective.destroy_collective_group(self._group)
            self._group = None
        if dist.is_initialized():  # the default group holds the old members' addresses
            dist.destroy_process_group()

    def local(self, gamma: float, rho: float) -> list[Any]:
        """Phase 1: K local steps toward the held center; the weights stay here."""
        result = self.round(self._rule.sent, gamma, rho)  # type: ignore[attr-defined]
        pairs = unpack(result, hasattr(self, "members"))
        self._kept = [w for w, _ in pairs]
        return [s for _, s in pairs]

    def reduce(
        self, rows: list[int], count: int, gamma: float, lr: float, p: int, attempt: int = 0
    ) -> list[float] | None:
        """Phase 2: all-reduce Σ of the good replicas' weights (`rows` of this unit, out of
        `count` in all), the same center update everywhere; ‖w^a − center‖ of `rows`.
        None: the all-reduce failed here (a member died inside it); a next `attempt` of
        the same round starts again from the center the round began with."""
        if attempt == 0:
            self._before = copy.deepcopy(self._rule.state_dict())
        else:
            self._rule.load_state_dict(copy.deepcopy(self._before))
        mine = [torch.from_numpy(self._kept[r]) for r in rows]
        n = self._kept[0].shape[0]
        total = coupling.replica_sum(mine) if mine else torch.zeros(n, dtype=torch.float32)
        device = self._device()
        if device.type == "cuda":
            total = total.to(device)
        try:
            self._all_reduce(total)
        except RuntimeError:  # gloo's and NCCL's errors when a member goes away
            return None
        self._rule.update_from_sum(total.cpu(), count, gamma, lr, p)
        value = self._rule.value
        assert value is not None
        return coupling.squared_distances(mine, value[:p]).sqrt().tolist() if mine else []

    def _all_reduce(self, total: Tensor) -> None:
        collective.allreduce(total, group_name=self._group or "")

    def center_value(self) -> np.ndarray | None:
        value = self._rule.value
        return None if value is None else value.numpy()

    def center_rule_state(self) -> dict[str, Any]:
        return self._rule.state_dict()

    def load_center_rule_state(self, state: dict[str, Any]) -> None:
        self._rule.load_state_dict(state)

    def _device(self) -> torch.device:
        first: Any = self.members[0] if hasattr(self, "members") else self
        device: torch.device = first.device
        return device


class CollectiveReplicaGroup(RayReplicaGroup):
    """RayReplicaGroup whose units keep the center and reduce it among themselves."""

    mixins = (CollectiveMember,)

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        self.tag, self.generation, self.joined = uuid.uuid4().hex[:8], 0, False
        super().__init__(config, *args, **kwargs)
        algo = config.algorithm
        rule = (algo.kind, algo.outer_lr, algo.outer_momentum)
        self._all_or_raise(self._call(lambda u, a: a.setup_center.remote(*rule), STARTUP_TIMEOUT_S))

    def shared_center(self) -> SharedCenter:
        return SharedCenter(self)

    @property
    def chains(self) -> bool:
        return False  # the units keep the center; a chain's would bypass their all-reduce

    def live(self) -> list[int]:
        return [u for u in range(len(self.actors)) if u not in self.lost]

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        """Phase 1 on every unit (`center` is None: the units hold their own)."""
        self.given.clear()  # as RayReplicaGroup.run_round: replace() starts afresh
        timeout = self.config.train.round_timeout_s
        outcomes = self._call(lambda u, a: a.local.remote(gamma, rho), timeout)
        out: list[RoundOutcome] = []
        for u, outcome in enumerate(outcomes):
            if isinstance(outcome, ReplicaLost):
                self.joined = False
                out += [outcome] * len(self.units_of[u])
            else:
                out += [(KEPT, stats) for stats in outcome]
        return out

    def reduce(
        self, good: list[int], gamma: float, lr: float, p: int
    ) -> dict[int, float | ReplicaLost]:
        """Phase 2 on the live units: ‖w^a − center‖ of each good replica, or ReplicaLost
        for one whose unit died inside the all-reduce (then summed again without it)."""
        lost: dict[int, float | ReplicaLost] = {}
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            units, chosen = self.live(), [a for a in good if a not in lost]
            if not units or not chosen:
                break
            self._form_group(units)
            distances, dead = self._reduce_once(units, chosen, (gamma, lr, p), attempt)
            if distances is not None:
                return {a: distances[a] for a in chosen} | lost
            lost |= {a: why for u, why in dead.items() for a in self.units_of[u] if a in chosen}
            self.joined = False  # formed again, without the dead, for the next attempt
        raise CollectiveFailed(
            "the all-reduce of the center did not complete (its units were lost, or hung "
            f"past train.round_timeout_s = {self.config.train.round_timeout_s:g} s); "
            "resubmit to resume"
        )

    def _reduce_once(
        self, units: list[int], chosen: list[int], rule: tuple[float, float, int], attempt: int
    ) -> tuple[dict[int, float] | None, dict[int, ReplicaLost]]:
        """One all-reduce of the chosen replicas over `units`: their distances (None if it
        failed anywhere) and the units lost in it."""
        rows = {u: [r for r, a in enumerate(self.units_of[u]) if a in chosen] for u in units}
        timeout = self.config.train.round_timeout_s
        outcomes = self._call(
            lambda u, a: a.reduce.remote(rows[u], len(chosen), *rule, attempt), timeout, units
        )
        dead = {u: o for u, o in zip(units, outcomes, strict=True) if isinstance(o, ReplicaLost)}
        if dead or any(o is None for o in outcomes):
            return None, dead
        distances = {
            self.units_of[u][r]: d
            for u, found in zip(units, outcomes, strict=True)
            for r, d in zip(rows[u], found, strict=True)
        }
        return distances, dead

    def _form_group(self, units: list[int]) -> None:
        """A new collective group of these units, when its members changed."""
        if self.joined:
            return
        self.generation += 1
        name, world = f"wv-{self.tag}-{self.generation}", len(units)
        rank = {u: i for i, u in enumerate(units)}

        def join(u: int, actor: Any) -> Any:
            return actor.join.remote(name, world, rank[u])

        joins = self._call(join, STARTUP_TIMEOUT_S, units)
        self._all_or_raise(joins, units)
        self.joined = True

    def from_live_unit(self, method: str) -> Any:
        """One live unit's answer to a no-argument call (the center lives on each)."""
        first = self.live()[0]
        timeout = self.config.train.round_timeout_s
        [value] = self._all_or_raise(
            self._call(lambda u, a: getattr(a, method).remote(), timeout, [first]), [first]
        )
        return value

    def load_center_state(self, state: dict[str, Any]) -> None:
        self._all_or_raise(
            self._call(lambda u, a: a.load_center_rule_state.remote(state), STARTUP_TIMEOUT_S)
        )

    def replace(self, index: int, state: dict[str, Any]) -> None:
        """A restarted unit gets the survivors' center and joins the group next round."""
        u, _ = locate(index, self.config.resources.per_actor())
        restarting = u in self.lost
        if restarting:
            rule_state = self.from_live_unit("center_rule_state")
        super().replace(index, state)
        if restarting:
            algo = self.config.algorithm
            actor = self.actors[u]
            actor.setup_center.remote(algo.kind, algo.outer_lr, algo.outer_momentum)
            loaded = self._call(
                lambda _, a: a.load_center_rule_state.remote(rule_state), STARTUP_TIMEOUT_S, [u]
            )
            self._all_or_raise(loaded, [u])
            self.joined = False


class SharedCenter:
    """The coordinator's handle on the center the units keep (coordinator.center_keeper.Center)."""

    sent = None  # the units pull toward their own copy

    def __init__(self, group: CollectiveReplicaGroup) -> None:
        self.group = group
        self.kind = group.config.algorithm.kind
        self.exchange_gamma = 0.0
        self._value: Tensor | None = None
        self._fresh = False

    @property
    def starts_from_initial_weights(self) -> bool:
        return self.kind in OUTER

    @property
    def value(self) -> Tensor | None:
        if not self._fresh:  # read once per round at most, and only when asked
            array = self.group.from_live_unit("center_value")
            self._value = None if array is None else torch.from_numpy(np.array(array))
            self._fresh = True
        return self._value

    def start(self, initial: Tensor) -> None:
        algo = self.group.config.algorithm
        rule = CenterRule(algo.kind, algo.outer_lr, algo.outer_momentum)
        rule.start(initial)
        self.load_state_dict(rule.state_dict())

    def pull_gamma(self, gamma: float) -> float:
        return self.exchange_gamma if self.kind == "easgd" else gamma

    def form(
        self, outcomes: list[RoundOutcome], good: list[int], gamma: float, lr: float, p: int
    ) -> dict[int, float | ReplicaLost]:
        distances = self.group.reduce(good, gamma, lr, p)
        if self.kind == "easgd":
            self.exchange_gamma = gamma
        self._fresh = False
        return distances

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.group.from_live_unit("center_rule_state")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.group.load_center_state(state)
        self.exchange_gamma = float(state.get("exchange_gamma", 0.0))
        self._fresh = False


def replica_group_class(config: Config) -> type[RayReplicaGroup]:
    """The group for resources.transport."""
    if config.resources.transport == "collective":
        return CollectiveReplicaGroup
    return RayReplicaGroup
