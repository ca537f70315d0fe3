"""Several rounds in one call, when one unit holds every replica.

Each round's Ray crossing (coordinator → unit → coordinator) leaves the unit idle, and
for a small model (the embedded default: 4 packed MLP replicas) it is a visible share of
the round. When one unit holds all the
replicas it has every weight the center is formed from, so it can form the center
itself and go straight on to the next round. The unit gets the coordinator's center
state and the (γ, ρ) of the rounds planned, and applies flatmath.center.CenterRule
exactly as the coordinator would (the same function on the same numbers: the run
computes the same floats, bit for bit). The LAST round of a chain is returned as a
plain round result, not formed, and so is a round in which any replica's loss or
weights stopped being finite: the coordinator handles that round as any other (failure
policy, center, evaluation, checkpoint), so those stay in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flatmath.center import CenterRule
from replicas.replica import RoundStats


@dataclass(frozen=True)
class FormedRound:
    """A round of the chain whose center the unit formed."""

    stats: list[RoundStats]
    distances: list[float]
    """‖w^a − center‖ per replica, in the unit's order."""
    seconds: tuple[float, float]
    """(the round's local work, forming the center)."""


@dataclass(frozen=True)
class Chain:
    formed: list[FormedRound]
    center: dict[str, Any]
    """CenterRule.state_dict() after the formed rounds: the coordinator's center from now."""
    last: Any
    """The unit's own result of the chain's last round (unit.round's), not formed."""
    last_seconds: float


def run_chain(
    unit: Any, center: dict[str, Any], plan: list[tuple[float, float]], budget_s: float
) -> Chain:
    """Up to len(plan) rounds of `unit` (a Replica or PackedReplicas), (γ, ρ) each, the
    center formed after every round but the last; the chain ends early at the first
    round past `budget_s` seconds or with a replica that is not finite."""
    if not plan:
        raise ValueError("a chain needs at least one round")
    algo = unit.config.algorithm
    rule = CenterRule(algo.kind, algo.outer_lr, algo.outer_momentum)
    rule.load_state_dict(center)
    start, formed = time.perf_counter(), list[FormedRound]()
    for i, (gamma, rho) in enumerate(plan):
        began = time.perf_counter()
        result = unit.round(rule.sent, rule.pull_gamma(gamma), rho)
        ran = time.perf_counter()
        rows, stats = _rows_and_stats(result)
        last = i == len(plan) - 1 or ran - start >= budget_s
        if last or not all(s.finite for s in stats):
            return Chain(formed, rule.state_dict(), result, ran - began)
        weights = [torch.from_numpy(row) for row in rows]
        distances = rule.update(weights, gamma, algo.lr, unit.num_params).tolist()
        formed.append(FormedRound(stats, distances, (ran - began, time.perf_counter() - ran)))
    raise AssertionError("unreachable: the last planned round returns")


def _rows_and_stats(result: Any) -> tuple[list[np.ndarray], list[RoundStats]]:
    """A Replica's (weights, stats) or a PackedReplicas' (block, [stats…]) as lists."""
    weights, stats = result
    if isinstance(stats, list):
        return list(weights), stats
    return [weights], [stats]


class Chaining:
    """Mixed into every unit's actor class (cluster/actors.py): rounds()."""

    def rounds(
        self, center: dict[str, Any], plan: list[tuple[float, float]], budget_s: float
    ) -> Chain:
        return run_chain(self, center, plan, budget_s)
