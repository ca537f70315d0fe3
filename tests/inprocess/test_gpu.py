"""Tier 2, GPU only: replicas and packed replicas on a CUDA device.

Skipped, with the reason, on machines without one (CI's CPU box). On a GPU machine:
`.venv/bin/python -m pytest -m gpu -ra`. Only the MLP is compared across devices:
cuDNN may run convolutions in TF32, which is not float32 rounding.
"""

import numpy as np
import pytest
import torch

from replicas.packed import PackedReplicas
from replicas.replica import Replica

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device; torch.cuda.is_available() is False on this machine",
    ),
]


def test_a_replica_on_the_gpu_takes_the_cpu_replicas_steps(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config("model.arch=mlp", "algorithm.coupling_period=3")
    on_cpu, on_gpu = Replica(0, config, "cpu"), Replica(0, config, "cuda")
    for _ in range(3):
        np.testing.assert_allclose(
            on_gpu.round(None, 0.0, 0.0)[0], on_cpu.round(None, 0.0, 0.0)[0], rtol=0, atol=1e-4
        )


@pytest.mark.parametrize("force_vmap", [False, True], ids=["kernels", "vmap"])
@pytest.mark.parametrize("arch", ["mlp", "cnn1d"])
def test_packed_replicas_on_the_gpu_match_the_lone_gpu_replicas(
    make_config, arch: str, force_vmap: bool
) -> None:  # type: ignore[no-untyped-def]
    config = make_config(f"model.arch={arch}", "algorithm.coupling_period=1")
    pack = PackedReplicas([0, 1], config, "cuda", force_vmap=force_vmap)
    alone = [Replica(0, config, "cuda"), Replica(1, config, "cuda")]
    for _ in range(5):
        block, stats = pack.round(None, 0.0, 0.0)
        assert all(s.finite for s in stats)
        for row, replica in enumerate(alone):
            np.testing.assert_allclose(
                block[row], replica.round(None, 0.0, 0.0)[0], rtol=0, atol=1e-4
            )
