"""Tier 2: several rounds per call (replicas/chain.py) compute exactly what one round per
call computes, for every algorithm, and hand failures to the coordinator as before."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest

from coordinator.coordinator import Coordinator
from coordinator.groups import CenterView, LocalGroup, Plan, Rounds
from foundation.config import Config
from replicas.chain import run_chain
from replicas.packed import PackedReplicas
from replicas.replica import Replica
from tests.support import ConfigFactory

TIMINGS = {"step_seconds", "coupling_seconds", "round_seconds", "center_seconds"}


@pytest.fixture(autouse=True)
def chain_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chain whatever a round costs: a loaded machine must not change what is tested."""
    monkeypatch.setattr("coordinator.coordinator.CHAIN_BELOW_S", math.inf)


class CountingGroup(LocalGroup):
    """LocalGroup that records, for each call the coordinator makes, the rounds its
    unit formed (0: a round alone, or a chain that ended after its first)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.chained: list[int] = []

    def run_rounds(self, center: CenterView, plan: Plan, budget_s: float) -> Rounds:
        ran = super().run_rounds(center, plan, budget_s)
        self.chained.append(len(ran.formed))
        return ran


def by_steps(config: Config) -> Coordinator:
    coordinator = Coordinator(config, LocalGroup)
    while not coordinator.done:
        coordinator.step()
    coordinator.finish()
    return coordinator


def by_chains(config: Config) -> tuple[Coordinator, list[int]]:
    coordinator = Coordinator(config, CountingGroup)
    while not coordinator.done:
        coordinator.advance(budget_s=60.0)
    coordinator.finish()
    assert isinstance(coordinator.group, CountingGroup)
    return coordinator, coordinator.group.chained


def without_timings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def weights(coordinator: Coordinator) -> list[np.ndarray]:
    assert isinstance(coordinator.group, LocalGroup)
    return [r.weights() for r in coordinator.group.replicas]


KINDS = [
    ["algorithm.kind=rsgd"],
    ["algorithm.kind=rsgd", "resources.replicas_per_actor=3"],
    ["algorithm.kind=easgd", "resources.replicas_per_actor=3"],
    ["algorithm.kind=diloco", "algorithm.outer_momentum=0.9", "resources.replicas_per_actor=3"],
    ["algorithm.kind=localsgd", "resources.replicas_per_actor=3"],
    ["algorithm.kind=parle", "algorithm.inner_steps=2", "resources.replicas_per_actor=3"],
    ["algorithm.kind=esgd", "algorithm.inner_steps=2", "resources.replicas_per_actor=3"],
    ["algorithm.kind=sgd", "resources.replicas_per_actor=3"],
]


@pytest.mark.parametrize("extra", KINDS, ids=lambda e: "-".join(s.split("=")[1] for s in e))
def test_chained_rounds_equal_one_round_per_call(
    make_config: ConfigFactory, extra: list[str]
) -> None:
    """Bit for bit: replicas, center, metrics rows and the final summary's sha256."""
    # One unit: 3 packed replicas, or (the first case) a single lone replica.
    y = "algorithm.replicas=1" if len(extra) == 1 else "algorithm.replicas=3"
    settings = [y, "train.rounds=9", "train.eval_every=4", "train.checkpoint_every=3", *extra]
    stepped = by_steps(make_config(*settings, name="stepped"))
    chained, formed = by_chains(make_config(*settings, name="chained"))
    # Round 1 alone; stops at rounds 3, 4, 6, 8 and 9: chains of rounds 2–3, 5–6 and 7–8
    # form 1 each, and rounds 4 and 9 run alone.
    assert formed == [0, 1, 0, 1, 1, 0]
    for a, b in zip(weights(stepped), weights(chained), strict=True):
        assert np.array_equal(a, b)
    assert stepped.center is not None and chained.center is not None
    assert np.array_equal(stepped.center.numpy(), chained.center.numpy())
    assert without_timings(stepped.rows) == without_timings(chained.rows)
    assert stepped.evaluations == chained.evaluations
    summaries = [json.loads(c.run.read_bytes("summary.json")) for c in (stepped, chained)]
    assert summaries[0]["center_sha256"] == summaries[1]["center_sha256"]


def test_a_chain_runs_to_the_next_stop_or_its_budget(make_config: ConfigFactory) -> None:
    config = make_config("algorithm.replicas=2", "resources.replicas_per_actor=2",
                         "train.rounds=30", "train.eval_every=10")  # fmt: skip
    coordinator = Coordinator(config, CountingGroup)
    assert isinstance(coordinator.group, CountingGroup)
    # Round 1 alone; past its budget after its first round, a chain ends there.
    assert [p["round"] for p in coordinator.advance(budget_s=0.0)] == [1]
    assert [p["round"] for p in coordinator.advance(budget_s=0.0)] == [2]
    assert coordinator.group.chained == [0, 0]
    # One call up to each evaluated round (10, 20, 30): a chain each, which forms all of
    # its rounds but the evaluated one, which the coordinator closes.
    calls = [coordinator.advance(budget_s=60.0) for _ in range(3)]
    assert [[p["round"] for p in call] for call in calls] == [
        list(range(3, 11)), list(range(11, 21)), list(range(21, 31))
    ]  # fmt: skip
    assert coordinator.group.chained == [0, 0, 7, 9, 9]
    assert [[p["round"] for p in call if "headline" in p] for call in calls] == [[10], [20], [30]]


class DivergesInRound5(PackedReplicas):
    """Member 1's weights turn NaN in the unit's 5th round (as a diverging step would)."""

    calls = 0

    def round(self, center: Any, gamma: float, rho: float) -> Any:
        block, stats = super().round(center, gamma, rho)
        self.calls += 1
        if self.calls == 5:
            self.block[1].fill_(math.nan)
            stats[1] = dataclasses.replace(stats[1], train_loss=math.nan, finite=False)
        return block, stats


def test_a_round_that_is_not_finite_ends_the_chain(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure policy sees the diverged round as in a run stepped round by round."""
    monkeypatch.setattr("coordinator.groups.PackedReplicas", DivergesInRound5)
    settings = ["algorithm.replicas=2", "resources.replicas_per_actor=2", "train.rounds=10",
                "train.eval_every=10", "train.on_divergence=restart"]  # fmt: skip
    stepped = by_steps(make_config(*settings, name="stepped"))
    chained, formed = by_chains(make_config(*settings, name="chained"))
    assert formed == [0, 3, 4]  # 1 alone; 2–4 formed, 5 diverged; 6–9 formed, 10 closed here
    failures = [(row["round"], row["replica"]) for row in chained.rows if row["failure"]]
    assert failures == [(5, 1)]
    assert without_timings(stepped.rows) == without_timings(chained.rows)
    for a, b in zip(weights(stepped), weights(chained), strict=True):
        assert np.array_equal(a, b)


class DiesOnce(Replica):
    """A replica whose 6th round raises, once (an actor that died mid-chain)."""

    rounds_run = 0

    def round(self, center: Any, gamma: float, rho: float) -> Any:
        DiesOnce.rounds_run += 1
        if DiesOnce.rounds_run == 6:
            raise RuntimeError("killed")
        return super().round(center, gamma, rho)


def test_a_unit_lost_in_a_chain_restarts_from_the_last_center(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coordinator.groups.Replica", DiesOnce)
    monkeypatch.setattr(DiesOnce, "rounds_run", 0)
    config = make_config("algorithm.replicas=1", "train.rounds=10", "train.eval_every=10")
    coordinator, formed = by_chains(config)
    assert coordinator.round == 10
    restarts = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    # Rounds 1 (alone) and 2–5 ran; round 6 died in the chain, which was lost with it;
    # restarted from round 1's center, the chain ran again: 2–9 formed, 10 closed here.
    assert [(e["round"], e["reason"]) for e in restarts] == [(2, "lost: RuntimeError: killed")]
    assert formed == [0, 0, 8] and math.isfinite(coordinator.rows[-1]["train_loss"])


def test_run_chain_refuses_an_empty_plan(make_config: ConfigFactory) -> None:
    unit = Replica(0, make_config())
    with pytest.raises(ValueError, match="at least one round"):
        run_chain(unit, {"center": None, "sent_center": None}, [], 1.0)
