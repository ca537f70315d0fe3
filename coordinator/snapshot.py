"""What a checkpoint holds of a run, and how a run resumes from one (beside the round loop).

capture() gathers everything resuming needs — the center (and what was last sent), the
γ/ρ schedules, the failure policy's state, the evaluations and every replica's state —
and restore() puts a Coordinator back where its newest good checkpoint left it,
refusing a config or a model that trains something else (resume.py says what is
checked; checkpoint.py writes and reads the files).
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa

from coordinator import checkpoint
from coordinator.center_keeper import Center
from coordinator.failures import FailurePolicy
from coordinator.groups import ReplicaGroup
from coordinator.resume import check_same_model, check_same_run
from coordinator.rundir import METRICS, RunDir
from flatmath.scoping import Scope, rescoped, schedules
from foundation.config import Config, to_dict


class RunState(Protocol):
    """The parts of a Coordinator a checkpoint holds."""

    config: Config
    run: RunDir
    round: int
    rule: Center
    gamma: Scope
    rho: Scope
    policy: FailurePolicy
    evaluations: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    group: ReplicaGroup
    allow_changes: tuple[str, ...]

    def states(self) -> list[dict[str, Any]]:
        """Every replica's state (lost replicas restarted from the center first)."""
        ...


def scopes(config: Config) -> tuple[Scope, Scope]:
    """A fresh run's γ and ρ schedules (flatmath/scoping.py); a checkpoint keeps their
    state, so a resumed run continues them where it stopped."""
    coupled = config.algorithm.kind != "sgd"  # plain SGD: y independent replicas, γ = 0
    return schedules(config.scoping, config.train.rounds, coupled)


def capture(run: RunState) -> dict[str, Any]:
    return {
        "round": run.round,
        "config": to_dict(run.config),
        **run.rule.state_dict(),
        "gamma": run.gamma.state_dict(),
        "rho": run.rho.state_dict(),
        **run.policy.state_dict(),
        "evaluations": run.evaluations,
        "replicas": run.states(),
        "num_params": run.group.num_params,
        "model": run.group.model,
    }


def restore(run: RunState) -> int | None:
    """Continue from the newest good checkpoint, if there is one; returns its round."""

    def corrupt(round_: int, why: str) -> None:
        run.run.event("checkpoint_skipped", round=round_, reason=why)

    found = checkpoint.load_latest(run.run, on_corrupt=corrupt)
    if found is None:
        return None
    round_, state = found
    now = to_dict(run.config)
    check_same_run(state["config"], now, run.run.path, run.allow_changes)
    check_same_model(state, run.group.model, run.run.path)
    run.round = round_
    run.rule.load_state_dict(state)
    run.gamma = Scope.from_state_dict(state["gamma"])
    run.rho = Scope.from_state_dict(state["rho"])
    scoping_may_change = any(k.split(".")[0] == "scoping" for k in run.allow_changes)
    if scoping_may_change and state["config"]["scoping"] != now["scoping"]:
        run.gamma, run.rho = rescoped(scopes(run.config), (run.gamma, run.rho))
    run.policy.load_state_dict(state)
    run.evaluations = list(state["evaluations"])
    run.group.load_states(state["replicas"])
    run.rows = [r for r in _metrics(run.run) if r["round"] <= round_]
    run.run.event("resume", round=round_)
    return round_


def _metrics(run: RunDir) -> list[dict[str, Any]]:
    """The metrics rows so far; a damaged table is set aside (its rows are lost, the
    checkpoint's state is not) so that the run resumes."""
    try:
        return run.read_table(METRICS)
    except (pa.ArrowException, OSError, ValueError) as err:  # truncated, not Parquet, …
        run.set_aside(METRICS, f"unreadable: {str(err).splitlines()[0]}")
        return []
