"""Tier 2: failures, divergence, checkpoints and exact resume, in-process."""

import math
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest
import torch

from coordinator import checkpoint
from coordinator.coordinator import Coordinator
from coordinator.failures import RunFailed
from coordinator.groups import LocalGroup, ReplicaLost, RoundOutcome
from coordinator.resume import ResumeMismatch
from foundation.config import Config
from replicas.replica import RoundStats
from tests.support import ConfigFactory


def finish(coordinator: Coordinator) -> dict[str, Any]:
    while not coordinator.done:
        coordinator.step()
    return coordinator.finish()


class Faulty(LocalGroup):
    """Failure injection at (replica, round): `kind` is "raise" (a lost replica) or "nan"."""

    plan: ClassVar[dict[tuple[int, int], str]] = {}

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.calls = 0

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        out = super().run_round(center, gamma, rho)
        for (replica, at), kind in self.plan.items():
            if at == self.calls and kind == "raise":
                self.lost_units.add(replica)
                out[replica] = ReplicaLost("RuntimeError: injected")
            elif at == self.calls and kind == "nan":
                weights, _ = cast(tuple[np.ndarray, RoundStats], out[replica])
                weights[:] = np.nan
                out[replica] = (weights, RoundStats(math.nan, 0.0, 0.0, False))
        self.calls += 1
        return out


def faulty(plan: dict[tuple[int, int], str]) -> type[Faulty]:
    return type("FaultyPlan", (Faulty,), {"plan": plan})


@pytest.mark.parametrize(
    "extra",
    [
        ["algorithm.kind=rsgd"],
        ["algorithm.kind=parle", "algorithm.inner_steps=3", "scoping.rho_max=1"],
        [
            "algorithm.kind=easgd",
            "scoping.kind=constant",
            "scoping.gamma0=2",
            "scoping.gamma_max=2",
        ],
        ["algorithm.kind=rsgd", "model.arch=cnn1d", "scoping.gamma0=auto"],
        ["algorithm.kind=diloco", "model.arch=cnn1d"],
        ["algorithm.kind=easgd", "scoping.gamma0=0.2", "scoping.gamma_max=2"],
    ],
    ids=["rsgd", "parle-noise", "easgd", "cnn1d-bn-auto", "diloco-outer-momentum", "easgd-scoped"],
)
def test_resume_ends_bit_identical_to_an_uninterrupted_run(
    make_config: ConfigFactory, extra: list[str]
) -> None:
    sets = [*extra, "train.rounds=7", "train.checkpoint_every=3", "train.eval_every=2"]
    whole = finish(Coordinator(make_config(*sets, name="whole"), LocalGroup))

    crashed = Coordinator(make_config(*sets, name="cut"), LocalGroup)
    for _ in range(5):  # checkpoint at 3, then two rounds that the crash loses
        crashed.step()
    del crashed
    resumed = Coordinator(make_config(*sets, name="cut"), LocalGroup)
    assert resumed.resumed_from == 3 and resumed.round == 3
    summary = finish(resumed)
    assert summary["center_sha256"] == whole["center_sha256"]
    assert summary["center_test_accuracy"] == whole["center_test_accuracy"]
    assert [(r["round"], r["replica"]) for r in resumed.rows] == [
        (r, a) for r in range(1, 8) for a in range(2)
    ]
    assert [e["event"] for e in resumed.run.events()].count("resume") == 1


def test_a_lost_replica_is_replaced_from_the_center_and_the_run_completes(
    make_config: ConfigFactory,
) -> None:
    coordinator = Coordinator(make_config("train.rounds=5", name="lost"), faulty({(1, 2): "raise"}))
    coordinator.step()
    coordinator.step()
    survivor = cast(LocalGroup, coordinator.group).replicas[0]
    coordinator.step()  # round 2: replica 1 is lost
    assert coordinator.center is not None
    # The center is replica 0 alone: the lost replica's partial round never reaches it.
    assert torch.equal(coordinator.center, torch.from_numpy(survivor.weights()))
    replaced = cast(LocalGroup, coordinator.group).replicas[1]
    assert np.array_equal(replaced.weights(), coordinator.center.numpy())
    summary = finish(coordinator)
    assert summary["rounds"] == 5
    events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    assert [(e["round"], e["replica"]) for e in events] == [(3, 1)]  # the third round
    assert "lost" in events[0]["reason"]
    failed_row = next(r for r in coordinator.rows if r["round"] == 3 and r["replica"] == 1)
    assert failed_row["train_loss"] is None and "injected" in failed_row["failure"]


def test_every_replica_lost_at_once_restarts_from_the_last_center_and_reruns_the_round(
    make_config: ConfigFactory,
) -> None:
    # What a dead actor does to a run whose replicas all sit in it (the default, packed).
    everyone = {(a, 2): "raise" for a in range(2)}
    coordinator = Coordinator(make_config("train.rounds=5", name="all-lost"), faulty(everyone))
    coordinator.step()
    coordinator.step()
    assert coordinator.center is not None
    last_center = coordinator.center.clone()
    coordinator.step()  # round 3: both lost, both restart from round 2's center, rerun
    group = cast(Faulty, coordinator.group)
    assert group.calls == 4  # the lost try and the rerun
    events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    assert [(e["round"], e["replica"]) for e in events] == [(3, 0), (3, 1)]
    rows = [r for r in coordinator.rows if r["round"] == 3]
    assert len(rows) == 2 and all(r["failure"] is None for r in rows)  # the rerun's rows
    assert not torch.equal(coordinator.center, last_center)  # the rerun trained
    assert finish(coordinator)["rounds"] == 5
    # Lost at every try: the run stops, as before.
    again = {(a, c): "raise" for a in range(2) for c in range(2, 9)}
    with pytest.raises(RunFailed, match="every replica failed in round 3"):
        finish(Coordinator(make_config("train.rounds=5", name="all-again"), faulty(again)))


def test_divergence_restart_halves_the_lr_and_goes_on(make_config: ConfigFactory) -> None:
    config = make_config("train.rounds=5", "train.on_divergence=restart", name="nan")
    coordinator = Coordinator(config, faulty({(0, 1): "nan"}))
    summary = finish(coordinator)
    assert summary["rounds"] == 5 and all(
        math.isfinite(a) for a in summary["replica_test_accuracy"]
    )
    kinds = [e["event"] for e in coordinator.run.events()]
    assert "divergence" in kinds and "replica_restarted" in kinds
    lrs = {(r["round"], r["replica"]): r["lr"] for r in coordinator.rows}
    assert lrs[(1, 0)] == pytest.approx(0.1) and lrs[(3, 0)] == pytest.approx(0.05)
    assert lrs[(3, 1)] == pytest.approx(0.1)
    assert cast(LocalGroup, coordinator.group).replicas[0].lr_scale == 0.5


def test_a_replica_that_keeps_failing_stops_the_run(make_config: ConfigFactory) -> None:
    plan = {(1, r): "raise" for r in range(5)}
    coordinator = Coordinator(make_config("train.rounds=5", name="again"), faulty(plan))
    with pytest.raises(RunFailed, match="replica 1 failed 3 rounds in a row"):
        finish(coordinator)
    everyone = {(a, 0): "raise" for a in range(2)}
    with pytest.raises(RunFailed, match="every replica failed in round 1"):
        Coordinator(make_config(name="all"), faulty(everyone)).step()


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_good_one(
    make_config: ConfigFactory,
) -> None:
    config = make_config("train.rounds=6", "train.checkpoint_every=2", name="corrupt")
    finish(Coordinator(config, LocalGroup))
    assert checkpoint.rounds(Coordinator(config, LocalGroup).run) == [2, 4, 6]
    folder = Path(config.run.storage) / config.run.name / "checkpoints"
    state = folder / "round-000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])  # truncated: the sha256 no longer matches
    (folder / "round-000004" / "manifest.json").unlink()  # never committed
    resumed = Coordinator(config, LocalGroup)
    assert resumed.resumed_from == 2
    skipped = [e for e in resumed.run.events() if e["event"] == "checkpoint_skipped"]
    assert [e["round"] for e in skipped] == [6, 4]
    assert "sha256" in skipped[0]["reason"]


def test_a_broken_last_checkpoint_is_written_again_by_the_rerun(
    make_config: ConfigFactory,
) -> None:
    """The final checkpoint was written only when its folder was missing: after a
    corrupted state.pt every rerun resumed from the older one, retrained, exited 0 and
    left the broken one in place."""
    config = make_config("train.rounds=6", "train.checkpoint_every=2", name="repair")
    first = finish(Coordinator(config, LocalGroup))
    state = Path(config.run.storage) / config.run.name / "checkpoints" / "round-000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    rerun = Coordinator(config, LocalGroup)
    assert rerun.resumed_from == 4
    assert finish(rerun)["center_sha256"] == first["center_sha256"]
    assert checkpoint.verified(rerun.run, 6) and checkpoint.load(rerun.run, 6)["round"] == 6


def test_resume_refuses_a_different_run_and_fresh_starts_over(make_config: ConfigFactory) -> None:
    finish(Coordinator(make_config(name="same"), LocalGroup))
    with pytest.raises(ResumeMismatch, match=r"algorithm\.lr = 0\.1, not 0\.2"):
        Coordinator(make_config("algorithm.lr=0.2", name="same"), LocalGroup)
    longer = Coordinator(make_config("train.rounds=6", name="same"), LocalGroup)
    assert longer.resumed_from == 4  # training longer is a resume, not a new run
    longer.shutdown()  # one writer at a time: its lease goes with it
    fresh = Coordinator(make_config("algorithm.lr=0.2", name="same"), LocalGroup, fresh=True)
    assert fresh.resumed_from is None and fresh.round == 0
    assert [e["event"] for e in fresh.run.events()] == ["start"]


def test_checkpoints_load_with_weights_only(make_config: ConfigFactory) -> None:
    config = make_config(name="safe")
    finish(Coordinator(config, LocalGroup))
    path = Path(config.run.storage) / config.run.name / "checkpoints" / "round-000004" / "state.pt"
    state = torch.load(path, weights_only=True)
    assert state["round"] == 4 and len(state["replicas"]) == 2
    assert isinstance(state["center"], torch.Tensor)


def test_allowed_changes_resume_with_the_new_lr_and_schedule(make_config: ConfigFactory) -> None:
    """What Population Based Training needs: take over a checkpoint with a new η and γ0."""
    finish(
        Coordinator(
            make_config("scoping.kind=constant", "scoping.gamma0=0.1", name="pbt"), LocalGroup
        )
    )
    changed = make_config("scoping.kind=constant", "scoping.gamma0=0.3", "algorithm.lr=0.05",
                          "train.rounds=6", name="pbt")  # fmt: skip
    with pytest.raises(ResumeMismatch):
        Coordinator(changed, LocalGroup)
    coordinator = Coordinator(changed, LocalGroup, allow_changes=("algorithm.lr", "scoping.gamma0"))
    assert coordinator.resumed_from == 4 and coordinator.gamma.value() == pytest.approx(0.3)
    assert coordinator.gamma.round == 4
    coordinator.step()
    assert (
        coordinator.rows[-1]["lr"] == pytest.approx(0.05) and coordinator.rows[-1]["gamma"] == 0.3
    )


class Recording(LocalGroup):
    """Records the γ each round's coupling is applied with."""

    pulls: ClassVar[list[float]] = []

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        self.pulls.append(gamma)
        return super().run_round(center, gamma, rho)


def test_easgd_exchange_has_one_alpha_while_gamma_is_scoped(make_config: ConfigFactory) -> None:
    """The replicas' half of exchange r (applied at the start of round r + 1) must use the
    α = ηγ of the coordinator's half (end of round r), not the next round's γ: else
    Σ_a w^a + w̃ is not conserved by an exchange (it was, before, with γ(r + 1))."""
    config = make_config(
        "algorithm.kind=easgd", "train.rounds=5", "scoping.kind=exponential",
        "scoping.gamma0=0.2", "scoping.gamma1=1.0", "scoping.gamma_max=2",
    )  # fmt: skip
    Recording.pulls = []
    coordinator = Coordinator(config, Recording)
    finish(coordinator)
    by_round = {row["round"]: row["gamma"] for row in coordinator.rows}  # the center's γ
    for r in range(2, 6):  # round r pulls toward the w̃ of exchange r − 1
        assert Recording.pulls[r - 1] == by_round[r - 1] != by_round[r], r
    # and on numbers: two replicas, one exchange with one α conserves the total
    w, c, alpha = torch.tensor([[1.0, 2.0], [3.0, -2.0]]), torch.tensor([0.5, 0.5]), 0.2
    new_c = c + alpha * (w - c).sum(dim=0)
    new_w = w - alpha * (w - c)
    torch.testing.assert_close(new_w.sum(dim=0) + new_c, w.sum(dim=0) + c)
