"""Tier 3: real replica actors on a local Ray."""

import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from cluster import driver
from cluster.actors import RayReplicaGroup
from cluster.resources import ResourceError, replica_resources
from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import Config, load_config
from jobs import CONFIG_DIR, train
from replicas.replica import RoundStats

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def smoke(tmp_path: Path, data_root: Path, name: str) -> Config:
    sets = [f"run.storage={tmp_path}", f"run.name={name}", f"data.root={data_root}"]
    return load_config(CONFIG_DIR / "smoke.toml", sets)


def test_smoke_twice_gives_the_same_center_as_in_process(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = driver.run(smoke(tmp_path, data_root, "first"))
    second = driver.run(smoke(tmp_path, data_root, "second"))
    assert first["center_sha256"] == second["center_sha256"]
    assert "round    20/20" in capsys.readouterr().out

    # The object-store transport must not change a single bit of the numbers.
    local = Coordinator(smoke(tmp_path, data_root, "local"), LocalGroup)
    while not local.done:
        local.step()
    assert local.finish()["center_sha256"] == first["center_sha256"]
    on_disk = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert on_disk["center_sha256"] == first["center_sha256"] and on_disk["rounds"] == 20


def test_round_results_come_back_as_one_flat_buffer_per_replica(
    tmp_path: Path, data_root: Path
) -> None:
    config = smoke(tmp_path, data_root, "group")
    group = RayReplicaGroup(config)
    try:
        results = group.run_round(None, 0.0, 0.0)
        assert len(results) == 2
        for weights, stats in cast(list[tuple[np.ndarray, RoundStats]], results):
            assert weights.ndim == 1 and weights.dtype.name == "float32"
            assert weights.size >= group.num_params and stats.finite
    finally:
        group.shutdown()


def test_more_gpus_than_the_cluster_has_fails_before_any_actor(
    tmp_path: Path, data_root: Path
) -> None:
    import ray

    config = load_config(None, [f"run.storage={tmp_path}", "resources.gpus_per_replica=1"])
    with pytest.raises(ResourceError, match=r"needs 4 GPUs; the cluster has 0"):
        replica_resources(config, ray.cluster_resources())
    assert train.main(["--set", f"run.storage={tmp_path}", "--set", f"data.root={data_root}",
                       "--set", "resources.gpus_per_replica=1"]) == 2  # fmt: skip


def test_packed_actors_on_ray_match_packed_in_process(tmp_path: Path, data_root: Path) -> None:
    sets = [f"run.storage={tmp_path}", f"data.root={data_root}", "algorithm.replicas=4",
            "resources.replicas_per_actor=2", "train.rounds=6"]  # fmt: skip
    on_ray = driver.run(load_config(CONFIG_DIR / "smoke.toml", [*sets, "run.name=ray"]))
    local = Coordinator(
        load_config(CONFIG_DIR / "smoke.toml", [*sets, "run.name=local"]), LocalGroup
    )
    while not local.done:
        local.step()
    assert local.finish()["center_sha256"] == on_ray["center_sha256"]


def test_auto_packs_replicas_that_outnumber_the_cpus_into_one_actor(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [
        f"run.storage={tmp_path}",
        f"data.root={data_root}",
        "algorithm.replicas=4",
        "train.rounds=4",
    ]  # fmt: skip  (4 replicas, 2 CPUs; replicas_per_actor = auto)
    on_ray = driver.run(load_config(CONFIG_DIR / "smoke.toml", [*sets, "run.name=auto"]))
    assert "4 replicas (one actor of 4)" in capsys.readouterr().out
    saved = load_config(tmp_path / "auto" / "config.toml")
    assert saved.resources.replicas_per_actor == 4  # what ran, for a resume to read
    packed = [*sets, "run.name=local", "resources.replicas_per_actor=4"]
    local = Coordinator(load_config(CONFIG_DIR / "smoke.toml", packed), LocalGroup)
    while not local.done:
        local.step()
    assert local.finish()["center_sha256"] == on_ray["center_sha256"]


@pytest.mark.parametrize(
    ("per_actor", "killed", "restarted"),
    [(2, 1, [2, 3]), (4, 0, [0, 1, 2, 3])],  # one of two actors; the one actor of them all
    ids=["one-of-two-actors", "the-only-actor"],
)
def test_a_killed_packed_actor_restarts_all_its_replicas(
    tmp_path: Path, data_root: Path, per_actor: int, killed: int, restarted: list[int]
) -> None:
    import ray

    sets = [f"run.storage={tmp_path}", f"data.root={data_root}", "algorithm.replicas=4",
            f"resources.replicas_per_actor={per_actor}", "train.rounds=4"]  # fmt: skip
    coordinator = Coordinator(load_config(CONFIG_DIR / "smoke.toml", sets), RayReplicaGroup)
    try:
        coordinator.step()
        ray.kill(cast(RayReplicaGroup, coordinator.group).actors[killed])
        while not coordinator.done:
            coordinator.step()
        assert coordinator.finish()["rounds"] == 4
    finally:
        coordinator.shutdown()
    events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    # Lost in round 2; with every replica in the killed actor, round 2 then runs again.
    assert [(e["round"], e["replica"]) for e in events] == [(2, a) for a in restarted]


def test_the_one_actor_killed_in_the_middle_of_a_chain_restarts_from_the_center(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """advance() runs rounds 2… in one call to the one actor (replicas/chain.py); killed
    there, the chain's rounds are lost with it and every replica restarts from the center
    of round 1, the last one the coordinator holds."""
    import threading

    import ray

    # Chain from round 2 however long round 1 took: on a loaded box it took over
    # CHAIN_BELOW_S once, round 2 ran alone and the chain (and the restart) began at 3.
    monkeypatch.setattr("coordinator.coordinator.CHAIN_BELOW_S", 60.0)

    sets = [f"run.storage={tmp_path}", f"data.root={data_root}", "algorithm.replicas=4",
            "resources.replicas_per_actor=4", "train.rounds=200",
            "train.eval_every=200", "train.checkpoint_every=0"]  # fmt: skip
    coordinator = Coordinator(load_config(CONFIG_DIR / "smoke.toml", sets), RayReplicaGroup)
    try:
        coordinator.advance(budget_s=0.0)  # round 1: never chained
        actor = cast(RayReplicaGroup, coordinator.group).actors[0]
        threading.Timer(1.0, ray.kill, [actor]).start()  # 200 rounds take several seconds
        chain = coordinator.advance(budget_s=600.0)
        assert [p["round"] for p in chain] == list(range(2, 201))
    finally:
        coordinator.shutdown()
    events = [e for e in coordinator.run.events() if e["event"] == "replica_restarted"]
    assert [(e["round"], e["replica"]) for e in events] == [(2, a) for a in range(4)]
    assert all(e["reason"].startswith("lost: actor died") for e in events)
