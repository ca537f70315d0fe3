"""Tier 2: p replicas packed in one unit (torch.func) match the same replicas unpacked."""

from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import Config
from replicas.packed import PackedReplicas
from replicas.replica import Replica
from tests.support import ConfigFactory


def final_weights(config: Config) -> tuple[list[np.ndarray], dict[str, Any]]:
    coordinator = Coordinator(config, LocalGroup)
    while not coordinator.done:
        coordinator.step()
    summary = coordinator.finish()
    return [r.weights() for r in cast(LocalGroup, coordinator.group).replicas], summary


@pytest.mark.parametrize(
    "extra",
    [
        ["algorithm.kind=rsgd"],
        ["algorithm.kind=rsgd", "model.arch=cnn1d", "algorithm.nesterov=true"],
        ["algorithm.kind=parle", "algorithm.inner_steps=3", "scoping.rho_max=1"],
        ["algorithm.kind=esgd", "model.arch=cnn1d", "algorithm.inner_steps=2"],
        [
            "algorithm.kind=easgd",
            "scoping.kind=constant",
            "scoping.gamma0=2",
            "scoping.gamma_max=2",
        ],
    ],
    ids=["rsgd-mlp", "rsgd-cnn1d-bn", "parle-noise", "esgd-cnn1d-bn", "easgd"],
)
def test_packed_and_unpacked_runs_agree(make_config: ConfigFactory, extra: list[str]) -> None:
    sets = [*extra, "algorithm.replicas=3", "train.rounds=3"]
    alone, alone_summary = final_weights(make_config(*sets, name="alone"))
    packed, packed_summary = final_weights(
        make_config(*sets, "resources.replicas_per_actor=2", name="packed")  # units of 2 and 1
    )
    # Each step agrees to ~1e-7 (the next test); over 15 steps with momentum, BatchNorm
    # and coupling, float reordering in the vmapped kernels grows to ~1e-3 at most.
    for a, b in zip(alone, packed, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-3)
    assert packed_summary["center_test_accuracy"] == pytest.approx(
        alone_summary["center_test_accuracy"], abs=0.01
    )


ON_GPU = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason="needs a CUDA device; torch.cuda.is_available() is False on this machine",
        ),
    ],
)


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("force_vmap", [False, True], ids=["kernels", "vmap"])
@pytest.mark.parametrize("arch", ["mlp", "cnn1d"])
def test_each_packed_step_matches_the_lone_replicas_to_float_rounding(
    make_config: ConfigFactory,
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
    force_vmap: bool,
    device: str,
) -> None:
    # cuDNN may run the lone replicas' convolutions in TF32, which is not float32 rounding.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    config = make_config(f"model.arch={arch}", "algorithm.coupling_period=1")
    pack = PackedReplicas([0, 1], config, device, force_vmap=force_vmap)
    assert pack.forward_kind == ("vmap" if force_vmap else "batched kernels")
    alone = [Replica(0, config, device), Replica(1, config, device)]
    for _ in range(5):
        block, stats = pack.round(None, 0.0, 0.0)
        assert all(s.finite for s in stats)
        for row, replica in enumerate(alone):
            np.testing.assert_allclose(
                block[row],
                replica.round(None, 0.0, 0.0)[0],
                rtol=0,
                atol=1e-6 if device == "cpu" else 1e-4,
            )
    for member, replica in zip(pack.members, alone, strict=True):  # BatchNorm's batch count
        counts = [{n: int(b) for n, b in r.state_dict()["int_buffers"].items()}
                  for r in (member, replica)]  # fmt: skip
        assert counts[0] == counts[1] == ({"2.num_batches_tracked": 5} if arch == "cnn1d" else {})


def test_packed_rows_are_the_members_weights(make_config: ConfigFactory) -> None:
    pack = PackedReplicas([0, 1], make_config())
    block, stats = pack.round(None, 0.0, 0.0)
    for row, member in enumerate(pack.members):
        assert np.array_equal(block[row], member.weights())
        assert stats[row].finite and stats[row].position == (
            member.stream.epoch,
            member.stream.offset,
        )
    assert not np.array_equal(block[0], block[1])
    assert pack.members[1].data is pack.members[0].data  # one copy of the data set per unit


class WithUnusedLayer(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(input_shape[0], num_classes), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_parameter_that_never_reaches_the_loss_gets_a_zero_gradient(
    make_config: ConfigFactory,
) -> None:
    config = make_config(
        "algorithm.coupling_period=2", "algorithm.weight_decay=0",
        "model.arch=tests.inprocess.test_packed:WithUnusedLayer",  # a user model, by path
    )  # fmt: skip
    pack = PackedReplicas([0, 1], config)
    assert pack.forward_kind == "vmap"
    before = pack.block.clone()
    block, _ = pack.round(None, 0.0, 0.0)
    unused = [s for s in pack.slots if s.name.startswith("unused.")]
    for slot in unused:
        span = slice(slot.offset, slot.offset + slot.numel)
        assert np.array_equal(block[:, span], before[:, span].numpy())
    alone = Replica(0, config)
    np.testing.assert_allclose(block[0], alone.round(None, 0.0, 0.0)[0], rtol=0, atol=1e-6)
