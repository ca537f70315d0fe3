"""Tier 2, GPU only: a replica on a CUDA device takes the CPU replica's steps.

Skipped, with the reason, on machines without one (CI's CPU box). On a GPU machine:
`.venv/bin/python -m pytest -m gpu -ra` runs this and the GPU cases of
tests/inprocess/test_packed.py. Only the MLP is compared across devices: cuDNN may run
convolutions in TF32, which is not float32 rounding.
"""

import numpy as np
import pytest
import torch

from replicas.replica import Replica
from tests.support import ConfigFactory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device; torch.cuda.is_available() is False on this machine",
    ),
]


def test_a_replica_on_the_gpu_takes_the_cpu_replicas_steps(make_config: ConfigFactory) -> None:
    config = make_config("model.arch=mlp", "algorithm.coupling_period=3")
    on_cpu, on_gpu = Replica(0, config, "cpu"), Replica(0, config, "cuda")
    for _ in range(3):
        np.testing.assert_allclose(
            on_gpu.round(None, 0.0, 0.0)[0], on_cpu.round(None, 0.0, 0.0)[0], rtol=0, atol=1e-4
        )
