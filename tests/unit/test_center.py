"""flatmath.center: every rule from the replicas' sum alone (what the collective
transport all-reduces), on numbers worked out by hand, and equal to the gathered form."""

from __future__ import annotations

import pytest
import torch

from flatmath.center import CenterRule


def test_the_mean_from_a_sum_and_a_count() -> None:
    rule = CenterRule("rsgd")
    rule.update_from_sum(torch.tensor([3.0, -6.0]), 3, gamma=0.1, lr=0.1, num_params=2)
    assert rule.value is not None and rule.value.tolist() == [1.0, -2.0]
    assert rule.sent is not None and rule.sent.tolist() == [1.0, -2.0]


def test_easgd_center_half_from_the_sum() -> None:
    """w̃ = 1, Σ w^a = 4 over 2 replicas, α = ηγ = 0.1: w̃ ← 1 + 0.1 (4 − 2·1) = 1.2;
    the replicas are sent the old w̃ and the exchange's γ."""
    rule = CenterRule("easgd")
    rule.value = torch.tensor([1.0])
    rule.update_from_sum(torch.tensor([4.0]), 2, gamma=0.5, lr=0.2, num_params=1)
    assert rule.value is not None
    assert rule.value.item() == pytest.approx(1.2)
    assert rule.sent is not None and rule.sent.tolist() == [1.0] and rule.exchange_gamma == 0.5


def test_diloco_outer_nesterov_step_from_the_sum() -> None:
    """θ = 1, Σ θ_a = 1 over 2 (mean 0.5): Δ = 0.5, b = 0.5, θ ← 1 − 0.7 (0.5 + 0.9·0.5)
    = 0.335; the float buffer after the parameter is averaged: (2 + 4) / 2 = 3."""
    rule = CenterRule("diloco", outer_lr=0.7, outer_momentum=0.9)
    rule.start(torch.tensor([1.0, 9.0]))
    rule.update_from_sum(torch.tensor([1.0, 6.0]), 2, gamma=0.0, lr=0.1, num_params=1)
    assert rule.value is not None and rule.momentum is not None
    assert rule.value.tolist() == pytest.approx([0.335, 3.0])
    assert rule.momentum.tolist() == pytest.approx([0.5])


@pytest.mark.parametrize("kind", ["rsgd", "easgd", "diloco", "localsgd", "sgd"])
def test_the_gathered_form_is_the_sum_form_bit_for_bit(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, generator=g) for _ in range(3)]
    gathered, summed = CenterRule(kind, 0.7, 0.9), CenterRule(kind, 0.7, 0.9)
    for rule in (gathered, summed):
        if rule.starts_from_initial_weights:
            rule.start(torch.ones(6))
    distances = gathered.update(weights, 0.3, 0.1, 4)
    summed.update_from_sum(weights[0] + weights[1] + weights[2], 3, 0.3, 0.1, 4)
    assert gathered.value is not None and summed.value is not None
    assert torch.equal(gathered.value, summed.value)
    expected = torch.stack([(w[:4] - gathered.value[:4]).norm() for w in weights])
    torch.testing.assert_close(distances, expected)
