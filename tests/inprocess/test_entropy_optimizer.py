"""Tier 2: the drop-in EntropySGD optimizer trains a real network in a plain loop."""

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flatmath.local_steps import EntropySGD
from foundation.data import load_dataset
from foundation.models import build_model


def test_entropy_sgd_trains_the_mnist1d_mlp_far_above_chance(data_root: Path) -> None:
    started = time.perf_counter()
    data = load_dataset("mnist1d", data_root)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes)
    # The defaults: inner Nesterov momentum 0.9, none on the outer step at lr = 1.
    opt = EntropySGD(model.parameters(), inner_steps=10, gamma0=0.03, gamma1=1e-3, seed=0)
    order = torch.Generator().manual_seed(0)

    def closure() -> torch.Tensor:
        index = torch.randint(len(data.train.x), (100,), generator=order)
        opt.zero_grad()
        loss = F.cross_entropy(model(data.train.x[index]), data.train.y[index])
        loss.backward()
        return loss

    for _ in range(200):  # 200 outer steps × L = 10: 2000 gradient evaluations
        opt.step(closure)
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    print(f"EntropySGD MLP test accuracy {accuracy:.3f}")
    assert accuracy > 0.4, accuracy  # chance is 0.1
    assert time.perf_counter() - started < 60
