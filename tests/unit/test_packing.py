"""Tier 1: resources.replicas_per_actor = auto, as the driver resolves it for a cluster."""

from typing import Any

import pytest

from cluster.resources import AUTO_PACKED_ARCHS, resolve_packing
from coordinator.groups import layout
from coordinator.resume import check_same_run
from foundation.config import load_config, to_dict
from foundation.models import build_model
from replicas.packed_forward import compile_packed


def nodes(*cpus: float, dead: float | None = None) -> list[dict[str, Any]]:
    alive = [{"Alive": True, "Resources": {"CPU": c}} for c in cpus]
    return alive + ([{"Alive": False, "Resources": {"CPU": dead}}] if dead else [])


@pytest.mark.parametrize(
    ("sets", "cluster", "expected"),
    [
        ([], nodes(2.0), 4),  # the default on the 2-core box: all 4 in one actor
        (["algorithm.replicas=3"], nodes(2.0), 3),
        (["model.arch=cnn1d"], nodes(2.0), 4),
        (["algorithm.replicas=2"], nodes(2.0), 1),  # no more replicas than CPUs
        ([], nodes(4.0), 1),
        ([], nodes(2.0, dead=8.0), 4),  # a dead node holds no CPUs
        ([], nodes(1.0, 2.0, 2.0), 1),  # several nodes: spread or compact, one per actor
        (["resources.gpus_per_replica=0.25"], nodes(2.0), 1),
        (["resources.cpus_per_replica=0.5"], nodes(2.0), 1),  # the user sized the actors
        (["model.arch=smallconvnet", "data.dataset=cifar10"], nodes(2.0), 1),  # vmap: slower
        (["resources.replicas_per_actor=2"], nodes(2.0), 2),  # explicit: kept
        (["resources.replicas_per_actor=1"], nodes(2.0), 1),
    ],
)
def test_auto_packing_for_a_cluster(sets: list[str], cluster: list[Any], expected: int) -> None:
    config = load_config(None, sets)
    resolved = resolve_packing(config, cluster)
    assert resolved.resources.replicas_per_actor == expected
    assert sum(len(unit) for unit in layout(resolved)) == config.algorithm.replicas
    assert resolved.algorithm == config.algorithm and resolved.model == config.model


def test_auto_is_one_replica_per_actor_until_resolved() -> None:
    config = load_config(None, [])
    assert config.resources.replicas_per_actor == 0 and config.resources.per_actor() == 1
    assert layout(config) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("arch", AUTO_PACKED_ARCHS)
def test_auto_packs_only_models_the_batched_kernels_step(arch: str) -> None:
    # MNIST-1D's shape: 40 inputs, 10 classes.
    assert compile_packed(build_model(arch, (40,), 10)) is not None


def test_a_resume_may_pack_its_replicas_differently() -> None:
    saved = to_dict(load_config(None, ["resources.replicas_per_actor=4"]))
    check_same_run(saved, to_dict(load_config(None, [])), "runs/default")  # auto: allowed
    with pytest.raises(ValueError, match=r"resources.gpus_per_replica"):
        check_same_run(saved, to_dict(load_config(None, ["resources.gpus_per_replica=1"])), "x")
