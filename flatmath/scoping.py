"""Scoping schedules for γ (and Parle's ρ): pure functions of the round and a small state.

Formulas (docs/algorithms.md, Scoping), r counting rounds, R the horizon in rounds:
  constant     γ(r) = γ0
  exponential  γ(r) = γ0 (1 + γ1)^r
  linear       γ(r) = γ0 + (γmax − γ0) r / R
  cosine       γ(r) = γ0 + (γmax − γ0)/2 · (1 − cos(π r / R))
Every schedule is clipped at γmax. The cosine form is the design's γmax/2 (1 − cos(π r/R))
written from γ0 instead of 0: with γ0 = 0 they are the same, and a non-zero start is
what a user who sets gamma0 expects.

Automatic settings (Pittorino et al.): γ0 = None is measured after the first round as
(mean train loss) / (mean ½‖w^a − w̄‖²) — until then γ = 0, so the first round is
uncoupled; γ1 = None on an exponential schedule is (γmax/γ0)^(1/R) − 1, reaching γmax
at r = R. Unlike the reference code, the counter really advances (step()).

schedules() builds a run's γ and ρ from its scoping settings; rescoped() moves a
resumed run onto changed settings at the round it reached.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

SCHEDULES: tuple[str, ...] = ("constant", "exponential", "linear", "cosine")


def gamma_at(
    kind: str, r: int, *, gamma0: float, gamma1: float, gamma_max: float, horizon: int
) -> float:
    """γ(r) for one schedule, clipped at γmax. Pure: the same inputs give the same γ."""
    if r < 0:
        raise ValueError(f"round must be >= 0, got {r}")
    progress = min(r, horizon) / horizon if horizon > 0 else 1.0
    if kind == "constant":
        value = gamma0
    elif kind == "exponential":
        value = gamma0 * (1.0 + gamma1) ** r
    elif kind == "linear":
        value = gamma0 + (gamma_max - gamma0) * progress
    elif kind == "cosine":
        value = gamma0 + (gamma_max - gamma0) / 2.0 * (1.0 - math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown scoping schedule {kind!r}; expected one of {SCHEDULES}")
    return min(value, gamma_max)


def auto_gamma0(mean_train_loss: float, mean_half_sq_distance: float) -> float:
    """γ0 that makes the coupling term as large as the loss after the first round."""
    if mean_half_sq_distance <= 0.0 or not math.isfinite(mean_half_sq_distance):
        raise ValueError(
            "automatic gamma0 needs replicas that differ after the first round "
            f"(mean ½‖w − w̄‖² = {mean_half_sq_distance})"
        )
    return mean_train_loss / mean_half_sq_distance


def auto_gamma1(gamma0: float, gamma_max: float, horizon: int) -> float:
    """γ1 such that γ0 (1 + γ1)^R = γmax."""
    if not (gamma0 > 0 and math.isfinite(gamma_max) and gamma_max >= gamma0 and horizon > 0):
        raise ValueError(
            "automatic gamma1 needs 0 < gamma0 <= gamma_max < inf and a positive horizon "
            f"(gamma0={gamma0}, gamma_max={gamma_max}, horizon={horizon})"
        )
    return (gamma_max / gamma0) ** (1.0 / horizon) - 1.0


@dataclass(kw_only=True)
class Scope:
    """A schedule with its state: the round counter and the (possibly measured) γ0, γ1."""

    kind: str = "constant"
    gamma0: float | None = 0.0
    """γ0, the scope at round 0; None: measured after the first round (auto_gamma0)."""
    gamma1: float | None = 0.0
    """γ1, the exponential schedule's growth per round; None: auto_gamma1."""
    gamma_max: float = math.inf
    """γmax, the clip (and the end point of linear and cosine)."""
    horizon: int = 1
    """R, the number of rounds over which linear and cosine rise (and auto γ1 is set)."""
    round: int = 0
    """r, the counter; advanced by step()."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown scoping schedule {self.kind!r}; expected one of {SCHEDULES}")
        self._resolve_gamma1()

    @property
    def calibrated(self) -> bool:
        return self.gamma0 is not None

    def value(self, r: int | None = None) -> float:
        """γ at round r (default: the current round); 0 until an automatic γ0 is measured."""
        if self.gamma0 is None:
            return 0.0
        return gamma_at(
            self.kind,
            self.round if r is None else r,
            gamma0=self.gamma0,
            gamma1=self.gamma1 or 0.0,
            gamma_max=self.gamma_max,
            horizon=self.horizon,
        )

    def step(self) -> float:
        """Advance one round and return the new γ."""
        self.round += 1
        return self.value()

    def calibrate(self, mean_train_loss: float, mean_half_sq_distance: float) -> None:
        """Fix an automatic γ0 (and then γ1) from the first round's measurements."""
        if self.gamma0 is None:
            self.gamma0 = auto_gamma0(mean_train_loss, mean_half_sq_distance)
            self._resolve_gamma1()

    def _resolve_gamma1(self) -> None:
        if self.gamma1 is None and self.gamma0 is not None and self.kind == "exponential":
            if self.gamma0 >= self.gamma_max:
                # A measured γ0 at or past the clip: the schedule is γmax from the start
                # (auto_gamma1 would have no rate to find, and used to end the run).
                self.gamma1 = 0.0
            else:
                self.gamma1 = auto_gamma1(self.gamma0, self.gamma_max, self.horizon)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only, so it can live in a checkpoint or a JSON file."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Scope:
        return cls(**state)


class ScopingSettings(Protocol):
    """What the schedules are built from (the run config's [scoping] section)."""

    kind: str
    gamma0: float | str
    """γ0, or "auto"."""
    gamma1: float | str
    """γ1, or "auto"."""
    gamma_max: float
    rho0: float
    rho_max: float


def schedules(settings: ScopingSettings, horizon: int, coupled: bool) -> tuple[Scope, Scope]:
    """γ (the scope) and ρ (Parle's center pull) on the same schedule kind and horizon;
    `coupled` False (plain SGD's y independent replicas): γ = 0 throughout."""
    s = settings
    gamma1 = None if s.gamma1 == "auto" else float(s.gamma1)
    gamma0 = None if s.gamma0 == "auto" else float(s.gamma0)
    gamma = Scope(kind=s.kind, gamma0=gamma0, gamma1=gamma1, gamma_max=s.gamma_max,
                  horizon=horizon)  # fmt: skip
    rho = Scope(kind=s.kind, gamma0=s.rho0, gamma1=gamma1, gamma_max=s.rho_max, horizon=horizon)
    return (gamma if coupled else Scope(kind="constant", gamma0=0.0)), rho


def rescoped(new: tuple[Scope, Scope], reached: tuple[Scope, Scope]) -> tuple[Scope, Scope]:
    """The `new` schedules (a changed, allowed scoping config) at the round the `reached`
    ones are at; an automatic γ0 keeps what the first round measured."""
    (gamma, rho), (old_gamma, old_rho) = new, reached
    gamma.round, rho.round = old_gamma.round, old_rho.round
    if gamma.gamma0 is None:
        gamma.gamma0, gamma.gamma1 = old_gamma.gamma0, old_gamma.gamma1
    return gamma, rho
