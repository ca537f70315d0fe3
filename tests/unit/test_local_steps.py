"""Tier 1: local SGD steps and the Entropy-SGD inner loop against hand-computed numbers."""

import math

import pytest
import torch

from flatmath.local_steps import EntropySGD, GradFn, entropy_sgd_inner, momentum_step_

T = torch.tensor


def test_plain_sgd_step_by_hand() -> None:
    w = T([1.0, -2.0])
    momentum_step_(w, T([0.5, 1.0]), None, lr=0.1)
    assert torch.allclose(w, T([0.95, -2.1]))


def test_heavy_ball_two_steps_by_hand() -> None:
    w, buf = T([1.0, -2.0]), torch.zeros(2)
    momentum_step_(w, T([0.5, 1.0]), buf, lr=0.1, momentum=0.9)
    assert torch.allclose(w, T([0.95, -2.1])) and torch.allclose(buf, T([0.5, 1.0]))
    momentum_step_(w, T([1.0, 1.0]), buf, lr=0.1, momentum=0.9)  # b = [1.45, 1.9]
    assert torch.allclose(w, T([0.805, -2.29]))


def test_nesterov_and_weight_decay_by_hand() -> None:
    w, buf = T([1.0, -2.0]), torch.zeros(2)
    momentum_step_(w, T([0.5, 1.0]), buf, lr=0.1, momentum=0.9, nesterov=True)
    assert torch.allclose(w, T([0.905, -2.19]))  # d = g + 0.9 b = [0.95, 1.9]
    w = T([1.0, -2.0])
    momentum_step_(w, T([0.5, 1.0]), None, lr=0.1, weight_decay=0.1)  # g + λw = [0.6, 0.8]
    assert torch.allclose(w, T([0.94, -2.08]))


def test_momentum_step_matches_torch_sgd() -> None:
    torch.manual_seed(0)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    for nesterov in (False, True):
        p = torch.nn.Parameter(
            torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        )
        opt = torch.optim.SGD([p], lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=0.01)
        w, buf = p.detach().clone(), torch.zeros(5, dtype=torch.float64)
        for g in grads:
            p.grad = g.clone()
            opt.step()
            momentum_step_(w, g, buf, lr=0.05, momentum=0.8, nesterov=nesterov, weight_decay=0.01)
        assert torch.allclose(w, p.detach(), atol=1e-12)


def quadratic(a: float, w_star: float) -> GradFn:
    """L(w') = a/2 (w' − w*)², its gradient and loss as a GradFn."""

    def grad_fn(w: torch.Tensor) -> tuple[torch.Tensor, float]:
        return a * (w - w_star), float((a / 2 * (w - w_star) ** 2).sum())

    return grad_fn


def test_entropy_inner_loop_two_steps_by_hand() -> None:
    # a=2, w*=1, w=0, γ=1, η'=0.1, α=0.5, ε=0 (worked out in the comments):
    # step 1: g = −2 + 0 → w' = 0.2;  μ = 0.1
    # step 2: g = −1.6 + 0.2 → w' = 0.34; μ = 0.5·0.1 + 0.5·0.34 = 0.22
    w = T([0.0], dtype=torch.float64)
    out = entropy_sgd_inner(
        w, quadratic(2.0, 1.0), gamma=1.0, inner_lr=0.1, noise=0.0, alpha=0.5, steps=2
    )
    assert out.mu.item() == pytest.approx(0.22, abs=1e-12)
    assert out.mean_loss == pytest.approx((1.0 + 0.64) / 2, abs=1e-12)
    assert w.item() == 0.0, "the inner loop must not move w itself"


def test_entropy_inner_loop_with_nesterov_momentum_two_steps_by_hand() -> None:
    # a=2, w*=1, w=0, γ=1, η'=0.1, α=0.5, ε=0, momentum m=0.5 (Nesterov), b starts at 0:
    # step 1: ∇ = −2;  b = −2;  d = −2 + 0.5·(−2) = −3;  pull γ(w'−w) = 0
    #         w' = 0 − 0.1·(−3 + 0) = 0.3;  μ = 0.5·0 + 0.5·0.3 = 0.15
    # step 2: ∇ = 2·(0.3−1) = −1.4;  b = 0.5·(−2) − 1.4 = −2.4;  d = −1.4 − 1.2 = −2.6
    #         pull = 1·0.3 = 0.3;  w' = 0.3 − 0.1·(−2.6 + 0.3) = 0.53;  μ = 0.075 + 0.265 = 0.34
    w = T([0.0], dtype=torch.float64)
    out = entropy_sgd_inner(w, quadratic(2.0, 1.0), gamma=1.0, inner_lr=0.1, noise=0.0,
                            alpha=0.5, steps=2, momentum=0.5, nesterov=True)  # fmt: skip
    assert out.mu.item() == pytest.approx(0.34, abs=1e-12)
    # heavy ball, d = b: step 1 w' = 0.2, μ = 0.1;
    #                   step 2 b = −2.6, w' = 0.2 + 0.1·(2.6 − 0.2) = 0.44
    out = entropy_sgd_inner(w, quadratic(2.0, 1.0), gamma=1.0, inner_lr=0.1, noise=0.0,
                            alpha=0.5, steps=2, momentum=0.5, nesterov=False)  # fmt: skip
    assert out.mu.item() == pytest.approx(0.5 * 0.1 + 0.5 * 0.44, abs=1e-12)


def test_entropy_inner_momentum_starts_at_zero_every_call() -> None:
    """The buffer is reset every outer step: two calls from the same w agree exactly."""
    w = T([0.0, 3.0], dtype=torch.float64)
    a, b = (entropy_sgd_inner(w, quadratic(2.0, 1.0), gamma=0.5, inner_lr=0.1, noise=0.0,
                              alpha=0.75, steps=4, momentum=0.9) for _ in range(2))  # fmt: skip
    assert torch.equal(a.mu, b.mu)


def test_entropy_mu_converges_to_the_closed_form() -> None:
    # μ → (a w* + γ w)/(a + γ) = (2·1 + 3·0.5)/5 = 0.7 for ε = 0
    w = T([0.5], dtype=torch.float64)
    out = entropy_sgd_inner(
        w, quadratic(2.0, 1.0), gamma=3.0, inner_lr=0.1, noise=0.0, alpha=0.75, steps=500
    )
    assert out.mu.item() == pytest.approx(0.7, abs=1e-9)


def test_entropy_noise_is_sqrt_lr_times_eps_times_gaussian() -> None:
    def zero_grad(w: torch.Tensor) -> tuple[torch.Tensor, float]:
        return torch.zeros_like(w), 0.0

    w = torch.zeros(4)
    out = entropy_sgd_inner(
        w, zero_grad, gamma=0.0, inner_lr=0.01, noise=0.5, alpha=0.0, steps=1,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    z = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out.mu, math.sqrt(0.01) * 0.5 * z)  # α = 0: μ is w' itself


def test_entropy_sgd_with_gamma_zero_is_plain_sgd() -> None:
    # γ = 0, ε = 0, α = 0 (μ = last w'), η = 1, no momentum: one outer step = L SGD steps.
    grad_fn = quadratic(3.0, -1.0)
    w = T([2.0, 0.5], dtype=torch.float64)
    out = entropy_sgd_inner(w, grad_fn, gamma=0.0, inner_lr=0.05, noise=0.0, alpha=0.0, steps=7)
    outer = w.clone()
    momentum_step_(outer, outer - out.mu, None, lr=1.0)
    sgd = w.clone()
    for _ in range(7):
        momentum_step_(sgd, grad_fn(sgd)[0], None, lr=0.05)
    assert torch.allclose(outer, sgd, atol=1e-12)


def test_entropy_sgd_optimizer_equals_the_functional_loop() -> None:
    torch.manual_seed(0)
    target = torch.randn(3)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = EntropySGD([p], lr=0.5, inner_lr=0.1, inner_steps=3, gamma0=0.2, gamma1=0.0,
                     noise=0.0, alpha=0.75, momentum=0.0, nesterov=False,
                     inner_momentum=0.9)  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * (p - target).pow(2).sum()
        loss.backward()
        return loss

    w = torch.zeros(3)
    for _ in range(4):
        first = opt.step(closure)
        out = entropy_sgd_inner(
            w, lambda v: (v - target, float(0.5 * (v - target).pow(2).sum())),
            gamma=0.2, inner_lr=0.1, noise=0.0, alpha=0.75, steps=3, momentum=0.9,
        )  # fmt: skip
        assert first.item() == pytest.approx(float(0.5 * (w - target).pow(2).sum()), rel=1e-6)
        w = w - 0.5 * (w - out.mu)
        assert torch.allclose(p.detach(), w, atol=1e-6)
    assert opt.scope.round == 4


def test_entropy_sgd_scoping_state_survives_a_state_dict_round_trip() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = EntropySGD([p], inner_steps=1, gamma0=0.1, gamma1=1.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = p.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    assert opt.scope.value() == pytest.approx(0.4)
    fresh = EntropySGD([p], inner_steps=1, gamma0=0.1, gamma1=1.0)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.scope.round == 2 and fresh.scope.value() == pytest.approx(0.4)


def test_entropy_inner_loop_needs_a_step() -> None:
    with pytest.raises(ValueError, match="inner step"):
        entropy_sgd_inner(torch.zeros(1), quadratic(1.0, 0.0), gamma=0.0, inner_lr=0.1,
                          noise=0.0, alpha=0.5, steps=0)  # fmt: skip
