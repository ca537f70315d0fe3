"""What the round loop does about a replica that failed: restart it, or stop the run.

A small object beside the Coordinator (as Ray Train keeps its FailurePolicy beside its
controller): the Coordinator reports each round's outcomes, the policy says which
replicas failed and why, and decides. A lost replica (dead actor, lost node, a round
past the timeout, an exception) restarts from the center; a diverged one (NaN or inf)
stops the run or, with train.on_divergence = "restart", restarts with its learning
rate halved; a replica that fails MAX_CONSECUTIVE_FAILURES rounds in a row, or a round
in which every replica failed, stops the run. The policy's state (last finite losses,
learning-rate scales, data positions) is part of every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from coordinator.groups import ReplicaLost, RoundOutcome
from foundation.errors import WideValleyError

MAX_CONSECUTIVE_FAILURES = 3


class DivergenceError(WideValleyError, RuntimeError):
    """A replica's loss or weights became NaN or infinite (train.on_divergence = "stop")."""


class RunFailed(WideValleyError, RuntimeError):
    """The run cannot go on: every replica failed in one round, or one keeps failing."""


@dataclass(frozen=True)
class Divergence:
    replica: int
    loss: float
    last_finite_loss: float


@dataclass
class FailurePolicy:
    replicas: int
    on_divergence: str = "stop"
    last_finite_loss: list[float] = field(default_factory=list)
    lr_scale: list[float] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)
    """Each replica's data position after its last good round: where a restart resumes."""
    consecutive: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        y = self.replicas
        self.last_finite_loss = self.last_finite_loss or [math.nan] * y
        self.lr_scale = self.lr_scale or [1.0] * y
        self.positions = self.positions or [(0, 0)] * y
        self.consecutive = self.consecutive or [0] * y

    def classify(self, outcomes: list[RoundOutcome]) -> tuple[dict[int, str], list[Divergence]]:
        """The replicas whose round must not reach the center (→ reason), and the
        divergences among them; a good round resets its replica's failure count."""
        failed: dict[int, str] = {}
        diverged: list[Divergence] = []
        for a, outcome in enumerate(outcomes):
            if isinstance(outcome, ReplicaLost):
                failed[a] = f"lost: {outcome.reason}"
            elif not outcome[1].finite:
                diverged.append(Divergence(a, outcome[1].train_loss, self.last_finite_loss[a]))
                failed[a] = f"diverged (loss {outcome[1].train_loss})"
            else:
                self.last_finite_loss[a] = outcome[1].train_loss
                self.positions[a] = outcome[1].position
                self.consecutive[a] = 0
        return failed, diverged

    def decide(
        self, r: int, failed: dict[int, str], diverged: list[Divergence]
    ) -> Exception | None:
        """None: restart the failed replicas and go on; else the error that stops the run."""
        if diverged and self.on_divergence == "stop":
            d = diverged[0]
            return DivergenceError(
                f"replica {d.replica} diverged in round {r} (loss {d.loss}); "
                f"its last finite loss was {d.last_finite_loss:.6g}"
            )
        if failed and len(failed) == self.replicas:
            return RunFailed(f"every replica failed in round {r}: {failed}")
        for a in failed:
            self.consecutive[a] += 1
            if self.consecutive[a] >= MAX_CONSECUTIVE_FAILURES:
                return RunFailed(
                    f"replica {a} failed {self.consecutive[a]} rounds in a row: {failed[a]}"
                )
        return None

    def restart_state(self, a: int, reason: str, center: Any, seed: int) -> dict[str, Any]:
        """The state replica a restarts with: the center's weights, fresh optimizer state,
        its data stream where its last good round left it (lr halved after divergence)."""
        if reason.startswith("diverged"):
            self.lr_scale[a] /= 2
        epoch, offset = self.positions[a]
        stream = {"seed": seed, "epoch": epoch, "offset": offset}
        return {"flat": center.clone(), "momentum": None, "noise": None, "stream": stream,
                "lr_scale": self.lr_scale[a]}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's keys for this policy (the names older checkpoints use)."""
        return {
            "last_finite_loss": list(self.last_finite_loss),
            "lr_scale": list(self.lr_scale),
            "positions": [list(p) for p in self.positions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_finite_loss = list(state["last_finite_loss"])
        self.lr_scale = list(state["lr_scale"])
        self.positions = [(int(e), int(o)) for e, o in state["positions"]]
