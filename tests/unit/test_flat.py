"""Tier 1: one contiguous buffer per model, BatchNorm included, bit-exact both ways."""

from typing import cast

import pytest
import torch
from torch import nn

from flatmath.flat import FlatModule, flatten_state, unflatten_state_


def bn_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)
    )
    model.train()
    with torch.no_grad():  # move the running statistics away from their defaults
        for _ in range(3):
            model(torch.randn(5, 1, 8))
    return model


def test_flat_module_keeps_every_tensor_bit_exact() -> None:
    model = bn_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = FlatModule(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert flat.names()[-2:] == ["1.running_mean", "1.running_var"]
    assert flat.num_params == sum(p.numel() for p in model.parameters())


def test_flat_vector_is_the_model() -> None:
    model = bn_model(1)
    flat = FlatModule(model)
    x = torch.randn(2, 1, 8)
    model.eval()
    y0 = model(x)
    flat.flat.mul_(2.0)  # every weight and running statistic doubles through the view
    weight = cast(nn.Conv1d, model[0]).weight
    assert torch.equal(weight, flat.flat[: weight.numel()].view_as(weight))
    assert not torch.allclose(model(x), y0)
    flat.flat.div_(2.0)
    assert torch.equal(model(x), y0)


def test_gradients_land_in_the_flat_gradient() -> None:
    model = bn_model(2)
    flat = FlatModule(model)
    for _ in range(2):
        flat.zero_grad()
        model(torch.randn(4, 1, 8)).pow(2).sum().backward()
        expected = torch.cat([cast(torch.Tensor, p.grad).reshape(-1) for p in model.parameters()])
        assert torch.equal(flat.param_grad, expected)
        assert flat.param_grad.abs().sum() > 0


def test_flatten_unflatten_round_trip_is_bit_exact() -> None:
    source, target = bn_model(3), bn_model(4)
    vector = flatten_state(source)
    unflatten_state_(target, vector)
    for key, value in source.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(flatten_state(target), vector)
    with pytest.raises(ValueError, match="needs"):
        unflatten_state_(target, vector[:-1])


def test_load_refuses_a_wrong_size() -> None:
    flat = FlatModule(bn_model(5))
    with pytest.raises(ValueError, match="flat vector"):
        flat.load_(torch.zeros(3))
