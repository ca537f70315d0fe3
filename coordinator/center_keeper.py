"""Who keeps the center, behind one interface the Coordinator uses.

With the object-store transport the coordinator keeps it (GatheredCenter: it receives
every replica's weights and applies flatmath.center.CenterRule). With the collective
transport the replica units keep it among themselves and the coordinator holds only a
handle (cluster/collective.py's SharedCenter), which reads the center from a unit when
it is needed: an evaluation, a checkpoint, a restart, the end.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from torch import Tensor

from coordinator.groups import ReplicaLost, RoundOutcome, delivered
from flatmath.center import CenterRule
from flatmath.flat import readonly_tensor


class Center(Protocol):
    @property
    def value(self) -> Tensor | None:
        """The center w̄ (or EASGD's w̃, DiLoCo's θ) after the last round."""
        ...

    @property
    def sent(self) -> np.ndarray | None:
        """What the coordinator sends the replicas to pull toward (None: nothing, or the
        units hold it themselves)."""
        ...

    @property
    def starts_from_initial_weights(self) -> bool: ...

    def start(self, initial: Tensor) -> None: ...

    def pull_gamma(self, gamma: float) -> float: ...

    def form(
        self, outcomes: list[RoundOutcome], good: list[int], gamma: float, lr: float, p: int
    ) -> dict[int, float | ReplicaLost]:
        """The new center from the good replicas of this round; ‖w^a − center‖ of each,
        or ReplicaLost for one lost while the center was formed (the collective
        transport: its unit died inside the all-reduce; the center is then the others')."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GatheredCenter(CenterRule):
    """The center kept by the coordinator from the weights every replica sent."""

    def form(
        self, outcomes: list[RoundOutcome], good: list[int], gamma: float, lr: float, p: int
    ) -> dict[int, float | ReplicaLost]:
        # Read-only views of what the object store returned: summed row by row, no stacking.
        weights = [readonly_tensor(delivered(outcomes[a])[0]) for a in good]
        return dict(zip(good, self.update(weights, gamma, lr, p).tolist(), strict=True))
