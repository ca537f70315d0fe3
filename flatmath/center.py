"""The center and what each algorithm does with it, once per round.

Kept by the coordinator (the object-store transport: it gathers the weights) or, with
the collective transport, by every replica unit at once: each applies the same rule to
the same all-reduced sum, so all of them hold the same center (update_from_sum).

rsgd, parle: the center is the replicas' mean w̄, sent back for the pull.
sgd: the mean is formed (it is the reported model) but nothing is sent.
easgd: an explicit w̃ with its own dynamics: the coordinator applies its half of the
exchange, w̃ ← w̃ + α Σ_a (w^a − w̃), and sends the OLD w̃, toward which each replica
applies its own half next round, with the SAME α (both halves read the same w̃ and use
the same α = ηγ, so Σ_a w^a + w̃ is conserved even while γ is scoped).
diloco, localsgd: a center θ that the replicas start every round from; θ takes an outer
Nesterov step on the pseudo-gradient θ − mean (DiLoCo: η_out, m from the config; local
SGD: η_out = 1, m = 0, i.e. θ ← mean). θ starts at the replicas' common initial weights;
the outer momentum buffer is part of every checkpoint. Float buffers (BatchNorm
statistics) are averaged, not stepped.
The formulas are flatmath.coupling's; docs/algorithms.md states them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from flatmath import coupling

COUPLED = ("rsgd", "parle")  # the replicas pull toward the mean of the last round
OUTER = ("diloco", "localsgd")  # the replicas start each round from an outer-stepped θ


class CenterRule:
    def __init__(self, kind: str, outer_lr: float = 1.0, outer_momentum: float = 0.0) -> None:
        self.kind = kind
        if kind == "localsgd":  # periodic averaging: outer SGD with rate 1, no momentum
            outer_lr, outer_momentum = 1.0, 0.0
        self.outer_lr, self.outer_momentum = outer_lr, outer_momentum
        self.value: Tensor | None = None
        self.sent: np.ndarray | None = None
        """What the replicas pull toward next round (None: nothing to pull toward)."""
        self.exchange_gamma = 0.0
        """EASGD: the γ of the exchange whose old w̃ is `sent` (the replicas' half uses it)."""
        self.momentum: Tensor | None = None  # DiLoCo's outer momentum buffer

    @property
    def starts_from_initial_weights(self) -> bool:
        """diloco and localsgd need θ0, the replicas' common initial weights, first."""
        return self.kind in OUTER

    def start(self, initial: Tensor) -> None:
        self.value = initial.clone()
        self.sent = self.value.numpy()

    def pull_gamma(self, gamma: float) -> float:
        """The γ the replicas couple with this round: EASGD's is that of the exchange the
        coordinator began last round; the others use this round's."""
        return self.exchange_gamma if self.kind == "easgd" else gamma

    def update(self, weights: list[Tensor], gamma: float, lr: float, num_params: int) -> Tensor:
        """The new center from this round's weights (γ and η make EASGD's α = ηγ);
        returns ‖w^a − center‖ for each replica."""
        self.update_from_sum(coupling.replica_sum(weights), len(weights), gamma, lr, num_params)
        assert self.value is not None
        return coupling.squared_distances(weights, self.value[:num_params]).sqrt()

    def update_from_sum(
        self, total: Tensor, count: int, gamma: float, lr: float, num_params: int
    ) -> None:
        """The new center from Σ_a w^a over `count` replicas (consumes `total`). Every
        rule needs only the sum: the mean, EASGD's α Σ_a (w^a − w̃) = α (Σ_a w^a − y w̃),
        DiLoCo's pseudo-gradient θ − mean."""
        if self.kind == "easgd":
            if self.value is None:  # w̃ starts at the replicas' mean
                self.value = total.clone().div_(count)
            old, alpha = self.value.clone(), lr * gamma
            self.value.mul_(1.0 - alpha * count).add_(total, alpha=alpha)
            self.sent, self.exchange_gamma = old.numpy(), gamma  # the replicas' half: same α
        elif self.kind in OUTER:
            self._outer_step(total.div_(count), num_params)
        else:
            self.value = total.div_(count)
            self.sent = self.value.numpy() if self.kind in COUPLED else None

    def _outer_step(self, mean: Tensor, num_params: int) -> None:
        if self.value is None:
            raise RuntimeError(f"{self.kind} needs its initial center (start()) first")
        if self.momentum is None and self.outer_momentum:
            self.momentum = torch.zeros(num_params, dtype=self.value.dtype)
        p = num_params
        coupling.diloco_step_to_mean_(
            self.value[:p], mean[:p], self.momentum, self.outer_lr, self.outer_momentum
        )
        self.value[p:] = mean[p:]  # float buffers (BatchNorm statistics): averaged
        self.sent = self.value.numpy()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's keys for the center (the names older checkpoints use)."""
        sent = None if self.sent is None else _owned(self.sent)
        return {"center": self.value, "sent_center": sent, "exchange_gamma": self.exchange_gamma,
                "outer_momentum": self.momentum}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["center"]
        sent = state["sent_center"]
        self.sent = None if sent is None else sent.numpy()
        self.exchange_gamma = float(state.get("exchange_gamma", 0.0))
        self.momentum = state.get("outer_momentum")


def _owned(array: np.ndarray) -> Tensor:
    """A tensor that owns a copy of `array` (which may be a read-only view)."""
    return torch.from_numpy(np.array(array, copy=True))
