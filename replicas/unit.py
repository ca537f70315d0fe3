"""One round of local steps, written once for a unit of replicas.

A unit is what one actor holds: one Replica (replica.py), or p replicas packed as the
rows of one [p, n] block that step together (packed.py); a single replica is a unit of
one. round() applies the coupling from the coordinator, then runs the local steps: K
SGD steps (sgd, rsgd, easgd, diloco, localsgd) or K outer Entropy-SGD steps of L inner
steps (esgd, parle), and returns the unit's weights with its stats. Those steps are
written here, once; a unit says only what its parameters are (a vector, or a block's
rows), how it gets a minibatch's loss and gradient, and how it reports a round. Each
shape keeps its own arithmetic where a float could differ (a lone replica's mean loss
is summed in Python floats, a block's per row in tensors), so no number moves.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from flatmath import coupling
from flatmath.local_steps import entropy_sgd_inner, momentum_step_
from foundation.config import Config

Stats = TypeVar("Stats")
ENTROPY_KINDS = ("esgd", "parle")


class Unit(ABC, Generic[Stats]):
    config: Config
    momentum: Tensor | None
    """The SGD momentum buffer, in the shape of params (None without momentum)."""

    # ---- what a unit says about itself -------------------------------------------

    @property
    @abstractmethod
    def params(self) -> Tensor:
        """The parameters the local steps update in place: a vector, or a [p, n] block."""

    @abstractmethod
    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """One minibatch's loss (a scalar, or one per row) and the gradient of params."""

    @abstractmethod
    def rate(self, base: float) -> float | Tensor:
        """A learning rate scaled by each replica's own lr scale (halved on divergence)."""

    @abstractmethod
    def noise(self) -> torch.Generator | list[torch.Generator]:
        """The SGLD noise generator(s), one per replica."""

    @abstractmethod
    def center_params(self, center: np.ndarray) -> Tensor:
        """The center's parameters on this unit's device."""

    @abstractmethod
    def pull(self, kind: str, center: np.ndarray, gamma: float, params: Tensor) -> None:
        """Every replica's half of the coupling, before its local steps."""

    @abstractmethod
    def sgd_loss(self, total: Tensor, steps: int) -> float | Tensor:
        """The round's mean loss from the sum of its `steps` minibatch losses."""

    @abstractmethod
    def entropy_loss(self, total: float, outer: int, inner: list[Tensor]) -> float | Tensor:
        """The round's mean loss from the sum of its `outer` steps' mean losses, or from
        every inner minibatch loss (`inner`, in order)."""

    @abstractmethod
    def report(
        self, loss: float | Tensor, step_s: float, coupling_s: float
    ) -> tuple[np.ndarray, Stats]:
        """The round's outgoing weights and its stats."""

    # ---- one round -----------------------------------------------------------------

    def round(
        self, center: np.ndarray | None, gamma: float, rho: float
    ) -> tuple[np.ndarray, Stats]:
        """Apply the coupling against `center`, run the local steps, return the weights."""
        start = time.perf_counter()
        kind = self.config.algorithm.kind
        center_params = None
        if center is not None:
            center_params = self.center_params(center)
            self.pull(kind, center, gamma, center_params)
        pulled = time.perf_counter()
        if kind in ENTROPY_KINDS:
            loss = self._entropy_steps(gamma, rho, center_params if kind == "parle" else None)
        else:
            loss = self._sgd_steps()
        return self.report(loss, time.perf_counter() - pulled, pulled - start)

    def _sgd_steps(self) -> float | Tensor:
        algo = self.config.algorithm
        rate, total = self.rate(algo.lr), None
        for _ in range(algo.coupling_period):
            loss, grad = self.loss_and_grad()
            total = loss.clone() if total is None else total.add_(loss)
            with torch.no_grad():
                momentum_step_(
                    self.params, grad, self.momentum, rate,
                    momentum=algo.momentum, nesterov=algo.nesterov, weight_decay=algo.weight_decay,
                )  # fmt: skip
        assert total is not None, "coupling_period is at least 1"
        return self.sgd_loss(total, algo.coupling_period)  # one device sync per round

    def _grad_at(self, w_prime: Tensor) -> tuple[Tensor, float]:
        with torch.no_grad():
            self.params.copy_(w_prime)
        loss, grad = self.loss_and_grad()
        self._inner_losses.append(loss)
        return grad, float(loss.mean())

    def _entropy_steps(
        self, gamma: float, rho: float, center_params: Tensor | None
    ) -> float | Tensor:
        """K outer Entropy-SGD steps; with a center, Parle's outer step (pull with ρ)."""
        algo = self.config.algorithm
        self._inner_losses: list[Tensor] = []
        total = 0.0
        with torch.no_grad():
            for _ in range(algo.coupling_period):
                w = self.params.clone()
                inner = entropy_sgd_inner(
                    w, self._grad_at, gamma=gamma, inner_lr=self.rate(algo.inner_lr),
                    noise=algo.noise, alpha=algo.mu_alpha, steps=algo.inner_steps,
                    weight_decay=algo.weight_decay, momentum=algo.inner_momentum,
                    nesterov=algo.inner_nesterov, generator=self.noise(),
                )  # fmt: skip
                total += inner.mean_loss
                if center_params is None:
                    direction = w - inner.mu
                else:
                    direction = coupling.parle_direction(w, inner.mu, center_params, rho)
                momentum_step_(
                    w, direction, self.momentum, self.rate(algo.lr),
                    momentum=algo.momentum, nesterov=algo.nesterov,
                )  # fmt: skip
                self.params.copy_(w)
        return self.entropy_loss(total, algo.coupling_period, self._inner_losses)
