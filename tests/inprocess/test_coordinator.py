"""Tier 2: the Coordinator driving in-process replicas (no Ray)."""

import itertools
import json
import math
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from coordinator.coordinator import Coordinator
from coordinator.failures import DivergenceError
from coordinator.groups import LocalGroup, RoundOutcome
from flatmath import coupling
from foundation.config import Config, load_config
from replicas.replica import Replica, RoundStats
from tests.support import ConfigFactory


def run(config: Config) -> Coordinator:
    coordinator = Coordinator(config, LocalGroup)
    while not coordinator.done:
        coordinator.step()
    coordinator.finish()
    return coordinator


def replica_weights(coordinator: Coordinator) -> list[np.ndarray]:
    group = coordinator.group
    assert isinstance(group, LocalGroup)
    return [r.weights() for r in group.replicas]


def test_uncoupled_replicas_equal_single_replica_runs(make_config: ConfigFactory) -> None:
    """γ = 0, same seeds: replica a of a y-replica run is exactly a lone replica a."""
    pair = run(make_config("algorithm.kind=sgd", name="pair"))
    alone = run(make_config("algorithm.kind=sgd", "algorithm.replicas=1", name="alone"))
    assert np.array_equal(replica_weights(pair)[0], replica_weights(alone)[0])
    lone = Replica(1, pair.config)  # replica 1 driven by hand: 4 uncoupled rounds
    for _ in range(pair.config.train.rounds):
        lone.round(None, 0.0, 0.0)
    assert np.array_equal(replica_weights(pair)[1], lone.weights())
    assert not np.array_equal(replica_weights(pair)[0], replica_weights(pair)[1])


def test_rsgd_with_zero_gamma_equals_sgd(make_config: ConfigFactory) -> None:
    coupled = run(
        make_config("algorithm.kind=rsgd", "scoping.kind=constant", "scoping.gamma0=0", name="g0")
    )
    sgd = run(make_config("algorithm.kind=sgd", name="sgd"))
    for a, b in zip(replica_weights(coupled), replica_weights(sgd), strict=True):
        assert np.array_equal(a, b)


def test_large_gamma_pulls_replicas_to_the_center(make_config: ConfigFactory) -> None:
    # η K γ = 0.1 · 5 · 1.6 = 0.8: each round removes 80% of the spread before local steps.
    config = make_config(
        "scoping.kind=constant",
        "scoping.gamma0=1.6",
        "scoping.gamma_max=2",
        "train.rounds=12",
        name="big",
    )
    coordinator = run(config)
    by_round = [
        np.mean([row["distance_to_center"] for row in coordinator.rows if row["round"] == r])
        for r in range(1, 13)
    ]
    assert by_round[-1] < 0.1 * by_round[0], by_round
    assert all(later < earlier for earlier, later in itertools.pairwise(by_round[1:5]))


def test_same_seed_same_center_and_other_seed_differs(make_config: ConfigFactory) -> None:
    first = json.loads((Path(run(make_config(name="a")).run.path) / "summary.json").read_text())
    again = json.loads((Path(run(make_config(name="b")).run.path) / "summary.json").read_text())
    other = json.loads(
        (Path(run(make_config("run.seed=1", name="c")).run.path) / "summary.json").read_text()
    )
    assert first["center_sha256"] == again["center_sha256"] != other["center_sha256"]


def test_run_directory_holds_what_the_design_promises(make_config: ConfigFactory) -> None:
    config = make_config(name="layout")
    coordinator = run(config)
    path = Path(coordinator.run.path)
    assert load_config(path / "config.toml") == config
    table = pq.read_table(path / "metrics.parquet").to_pylist()
    assert [(row["round"], row["replica"]) for row in table] == [
        (r, a) for r in range(1, 5) for a in range(2)
    ]
    for key in ("train_loss", "distance_to_center", "gamma", "lr"):
        assert all(isinstance(row[key], float) and math.isfinite(row[key]) for row in table), key
    assert [row["center_test_accuracy"] is not None for row in table] == [False] * 2 + [
        True
    ] * 2 + [False] * 2 + [True] * 2
    summary = json.loads((path / "summary.json").read_text())
    assert summary["rounds"] == 4 and len(summary["replica_test_accuracy"]) == 2
    assert 0.0 <= summary["ensemble_test_accuracy"] <= 1.0 and len(summary["center_sha256"]) == 64
    events = [
        json.loads(line)["event"] for line in (path / "events.jsonl").read_text().splitlines()
    ]
    assert events == ["start", "checkpoint", "finish"]
    assert (path / "checkpoints" / "round-000004" / "manifest.json").exists()
    assert (path / "plots" / "training.png").stat().st_size > 10_000


def test_center_is_the_mean_of_the_gathered_replicas(make_config: ConfigFactory) -> None:
    coordinator = Coordinator(make_config(name="mean"), LocalGroup)
    coordinator.step()
    weights = np.stack(replica_weights(coordinator))
    assert coordinator.center is not None
    assert torch.allclose(coordinator.center, torch.from_numpy(weights.mean(axis=0)), atol=1e-7)


@pytest.mark.parametrize("kind", ["sgd", "rsgd", "esgd", "parle", "easgd"])
def test_every_algorithm_runs_and_learns(make_config: ConfigFactory, kind: str) -> None:
    extra = (
        ["algorithm.inner_steps=4", "algorithm.lr=1", "scoping.rho_max=1"]
        if kind in ("esgd", "parle")
        else []
    )
    extra.append("train.rounds=8")
    if kind == "easgd":
        extra += ["scoping.kind=constant", "scoping.gamma0=2", "scoping.gamma_max=2"]
    summary = run(make_config(f"algorithm.kind={kind}", *extra, name=kind)).finish()
    assert np.mean(summary["replica_train_accuracy"]) > 0.2  # 10 classes: chance is 0.1
    if kind in ("rsgd", "parle", "easgd"):  # only a coupled center is itself a good model
        assert summary["center_train_accuracy"] > 0.2


def test_cnn1d_with_batchnorm_runs(make_config: ConfigFactory) -> None:
    summary = run(make_config("model.arch=cnn1d", name="bn")).finish()
    assert 0.0 <= summary["center_test_accuracy"] <= 1.0


class NanAt(LocalGroup):
    """Failure injection: replica `replica` returns NaN weights in round `at`."""

    def __init__(self, config: Config, replica: int = 1, at: int = 2) -> None:
        super().__init__(config)
        self.replica, self.at, self.calls = replica, at, 0

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[RoundOutcome]:
        results = super().run_round(center, gamma, rho)
        if self.calls == self.at:
            weights, _ = cast(tuple[np.ndarray, RoundStats], results[self.replica])
            weights[:] = np.nan
            results[self.replica] = (weights, RoundStats(math.nan, 0.0, 0.0, False))
        self.calls += 1
        return results


def test_divergence_stops_the_run_naming_round_and_replica(make_config: ConfigFactory) -> None:
    coordinator = Coordinator(make_config(name="nan"), NanAt)
    coordinator.step()
    coordinator.step()
    center_before = cast(torch.Tensor, coordinator.center).clone()
    with pytest.raises(
        DivergenceError, match=r"replica 1 diverged in round 3 .*last finite loss was \d"
    ):
        coordinator.step()
    assert torch.equal(cast(torch.Tensor, coordinator.center), center_before), (
        "NaN must never reach the center"
    )
    assert [e["event"] for e in coordinator.run.events()][-2:] == ["divergence", "stopped"]
    assert pq.read_table(Path(coordinator.run.path) / "metrics.parquet").num_rows == 4


def test_validation_mode_reports_the_held_out_part_not_test(make_config: ConfigFactory) -> None:
    config = make_config("data.validation=0.2")
    replica = Replica(0, config)
    assert len(replica.data.train.y) == 3200 and len(replica.data.test.y) == 800
    plain = Replica(0, make_config())
    assert len(plain.data.test.y) == 1000
    held = {tuple(row.tolist()) for row in replica.data.test.x[:50]}
    assert not held & {tuple(row.tolist()) for row in replica.data.train.x}


def test_diloco_replicas_start_every_round_from_the_center(make_config: ConfigFactory) -> None:
    """DiLoCo: common initial weights θ0, each round begins at θ, and θ takes the outer
    Nesterov step on θ − mean (checked against flatmath's formula, tested by hand)."""
    config = make_config("algorithm.kind=diloco", "algorithm.outer_lr=0.7",
                         "algorithm.outer_momentum=0.9")  # fmt: skip
    coordinator = Coordinator(config, LocalGroup)
    group = cast(LocalGroup, coordinator.group)
    first, second = (torch.from_numpy(r.weights()) for r in group.replicas)
    assert torch.equal(first, second), "DiLoCo replicas share θ0"
    theta = cast(torch.Tensor, coordinator.center).clone()
    buf = torch.zeros(group.num_params)
    for _ in range(3):
        coordinator.step()
        after = [torch.from_numpy(r.weights()) for r in group.replicas]
        p = group.num_params
        coupling.diloco_outer_step_(theta[:p], [w[:p] for w in after], buf, 0.7, 0.9)
        torch.testing.assert_close(cast(torch.Tensor, coordinator.center)[:p], theta[:p])
        theta = cast(torch.Tensor, coordinator.center).clone()
    coordinator.shutdown()
