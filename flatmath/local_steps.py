"""A replica's local updates on one flat parameter vector (pure torch, no Ray).

- momentum_step_: the SGD / heavy-ball / Nesterov step with torch.optim.SGD's semantics
  (dampening 0), used for local SGD steps and for Entropy-SGD's outer step.
- entropy_sgd_inner: Entropy-SGD's inner SGLD loop (docs/algorithms.md, Entropy-SGD), driven
  by a gradient callable, so the same code serves a replica actor, the packed path and
  the drop-in EntropySGD optimizer below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flatmath.flat import write_flat_
from flatmath.scoping import Scope

GradFn = Callable[[Tensor], tuple[Tensor, float]]
"""w' ↦ (∇L(w'; Ξ) as a flat tensor, the minibatch loss). Draws its own minibatch."""

Rate = float | Tensor
"""A step size: one number, or a [p, 1] column (one rate per packed replica row)."""


def _sub_scaled_(x: Tensor, y: Tensor, rate: Rate) -> Tensor:
    """x ← x − rate · y, with a scalar or a per-row rate."""
    return x.sub_(y, alpha=rate) if isinstance(rate, float | int) else x.sub_(y * rate)


def momentum_step_(
    weights: Tensor,
    grad: Tensor,
    buf: Tensor | None,
    lr: Rate,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> Tensor:
    """One step of torch.optim.SGD on a flat vector, in place; returns `weights`.

    g = ∇ + λ w;  b ← μ b + g;  d = g + μ b (Nesterov) or b;  w ← w − η d.
    `buf` (b) is updated in place and must start at zeros: μ·0 + g equals torch's
    clone-on-first-step. It may be None only when momentum is 0.
    """
    direction = grad.add(weights, alpha=weight_decay) if weight_decay else grad
    if momentum:
        if buf is None:
            raise ValueError("momentum > 0 needs a momentum buffer")
        buf.mul_(momentum).add_(direction)
        direction = direction.add(buf, alpha=momentum) if nesterov else buf
    return _sub_scaled_(weights, direction, lr)


@dataclass(frozen=True)
class InnerResult:
    mu: Tensor
    """μ, the running average of w' over the inner loop (the estimate of ⟨w'⟩)."""
    mean_loss: float
    """Mean minibatch loss over the L inner steps."""


def entropy_sgd_inner(
    weights: Tensor,
    grad_fn: GradFn,
    *,
    gamma: float,
    inner_lr: Rate,
    noise: float,
    alpha: float,
    steps: int,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = True,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> InnerResult:
    """Entropy-SGD's inner loop around the fixed point w (which is not modified).

    w', μ ← w;  b ← 0;  L times:
        d ← ∇L(w'; Ξ) + λ w';  b ← m b + d;  d ← d + m b (Nesterov) or b   [momentum m]
        w' ← w' − η' (d + γ (w' − w)) + √η' · ε · N(0, I);  μ ← α μ + (1 − α) w'.
    The momentum acts on the loss gradient only and its buffer starts at zero for every
    outer step, as in the Entropy-SGD reference code (python/optim.py); the coupling
    γ (w' − w) and the noise are added outside it. With m = 0 this is plain SGLD.
    For packed replicas w is [p, n], η' may be a [p, 1] column and `generator` one
    generator per row, so each row draws exactly the noise it would draw alone.
    """
    if steps < 1:
        raise ValueError(f"Entropy-SGD needs at least one inner step, got {steps}")
    w_prime = weights.clone()
    mu = weights.clone()
    buf = torch.zeros_like(weights) if momentum else None
    noise_scale = (inner_lr**0.5) * noise
    total_loss = 0.0
    for _ in range(steps):
        grad, loss = grad_fn(w_prime)
        total_loss += loss
        # The coupling term uses the same (old) w' as the gradient, so form it first.
        pull = (w_prime - weights).mul_(gamma)
        if buf is not None:
            step = grad.add(w_prime, alpha=weight_decay) if weight_decay else grad.clone()
            buf.mul_(momentum).add_(step)
            step = step.add_(buf, alpha=momentum) if nesterov else buf
            _sub_scaled_(_sub_scaled_(w_prime, step, inner_lr), pull, inner_lr)
        else:
            if weight_decay:
                pull.add_(w_prime, alpha=weight_decay)
            _sub_scaled_(_sub_scaled_(w_prime, grad, inner_lr), pull, inner_lr)
        if noise:
            _sub_scaled_(w_prime, _gaussian(w_prime, generator), -noise_scale)
        mu.mul_(alpha).add_(w_prime, alpha=1.0 - alpha)
    return InnerResult(mu=mu, mean_loss=total_loss / steps)


def _gaussian(like: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    """N(0, I) shaped like `like`; with one generator per row, row a from generator a."""
    if isinstance(generator, list):
        rows = [torch.randn(like.shape[1:], generator=g, dtype=like.dtype, device=like.device)
                for g in generator]  # fmt: skip
        return torch.stack(rows)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


class EntropySGD(torch.optim.Optimizer):
    """Entropy-SGD as a drop-in optimizer: `loss = opt.step(closure)` in a plain loop.

    One step() is one outer step: L inner steps (each calls `closure`, which must zero
    the gradients, draw a minibatch, compute the loss, call backward and return the
    loss), then w ← w − η (w − μ) with optional (Nesterov) momentum. γ is scoped per
    outer step: γ_t = γ0 (1 + γ1)^t, clipped at gamma_max; the counter is in the state.
    The inner loop runs Nesterov momentum `inner_momentum` on the gradient, its buffer
    reset every outer step. Defaults are the original code's (ucla-vision/entropy-sgd,
    python/optim.py and train.py: lr 1, inner lr 0.1, α = 0.75, ε = 1e-4, Nesterov 0.9 in
    the inner loop), with L = 20 (the paper's MNIST runs) and one departure: no momentum
    on the outer step. With lr = 1 the outer step already moves w all the way to μ, and
    the original's 0.9 on top of it overshoots: on the MNIST-1D MLP of
    tests/inprocess/test_entropy_optimizer.py it ends at chance (0.09), without it at 0.65.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 1.0,
        inner_lr: float = 0.1,
        inner_steps: int = 20,
        gamma0: float = 1e-4,
        gamma1: float = 1e-3,
        gamma_max: float = math.inf,
        noise: float = 1e-4,
        alpha: float = 0.75,
        momentum: float = 0.0,
        nesterov: bool = True,
        inner_momentum: float = 0.9,
        inner_nesterov: bool = True,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, inner_lr=inner_lr, inner_steps=inner_steps, noise=noise, alpha=alpha,
            momentum=momentum, nesterov=nesterov, inner_momentum=inner_momentum,
            inner_nesterov=inner_nesterov, weight_decay=weight_decay,
        )  # fmt: skip
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("EntropySGD takes one parameter group (w is one flat vector)")
        self.scope = Scope(kind="exponential", gamma0=gamma0, gamma1=gamma1, gamma_max=gamma_max)
        self.generator = torch.Generator().manual_seed(seed)

    def _params(self) -> list[Tensor]:
        return list(self.param_groups[0]["params"])

    def _flat_grad(self) -> Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self._params()
            ]
        )

    def _load(self, flat: Tensor) -> None:
        write_flat_(self._params(), flat)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("EntropySGD.step needs a closure that recomputes the loss")
        group = self.param_groups[0]
        weights = torch.cat([p.reshape(-1) for p in self._params()])
        first_loss: list[Tensor] = []

        def grad_fn(w_prime: Tensor) -> tuple[Tensor, float]:
            self._load(w_prime)
            with torch.enable_grad():
                loss = closure()
            if not first_loss:  # the loss at w itself, what a training loop reports
                first_loss.append(loss.detach())
            return self._flat_grad(), float(loss)

        inner = entropy_sgd_inner(
            weights, grad_fn, gamma=self.scope.value(), inner_lr=group["inner_lr"],
            noise=group["noise"], alpha=group["alpha"], steps=group["inner_steps"],
            weight_decay=group["weight_decay"], momentum=group["inner_momentum"],
            nesterov=group["inner_nesterov"], generator=self.generator,
        )  # fmt: skip
        state = self.state[self._params()[0]]
        if "outer_momentum" not in state:
            state["outer_momentum"] = torch.zeros_like(weights)
        momentum_step_(
            weights, weights - inner.mu, state["outer_momentum"], group["lr"],
            momentum=group["momentum"], nesterov=group["nesterov"],
        )  # fmt: skip
        self._load(weights)
        self.scope.step()
        state["scope_round"] = self.scope.round
        return first_loss[0]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = self.state[self._params()[0]].get("scope_round", 0)
        self.scope.round = int(saved)
