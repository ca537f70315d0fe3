"""A run's schedules and what may change when it resumes.

make_scopes builds γ (the scope) and ρ (Parle's center pull) from the config; a
checkpoint keeps their state, so a resumed run continues the schedule where it stopped.
check_same_run refuses to resume a run directory with a config that trains something
else; how long a run trains and how it reports may change (RESUMABLE_CHANGES).
"""

from __future__ import annotations

from typing import Any

from flatmath.scoping import Scope
from foundation.config import Config
from foundation.errors import WideValleyError


class ResumeMismatch(WideValleyError, ValueError):
    """The run directory holds a checkpoint of a differently configured run."""


# A resumed run may change how long it trains and how it reports, not what it trains.
# Checkpoints hold each replica on its own, so a resume may also pack them differently
# (resources.replicas_per_actor = auto on another cluster): the same training, though
# not bit-identical to an uninterrupted run, since packed kernels sum in another order.
RESUMABLE_CHANGES = ("train", "logging", "run.name", "run.storage", "resources.replicas_per_actor")


def make_scopes(config: Config) -> tuple[Scope, Scope]:
    """γ (the scope) and ρ (Parle's center pull) on the same schedule kind and horizon."""
    s, horizon = config.scoping, config.train.rounds
    gamma1 = None if s.gamma1 == "auto" else float(s.gamma1)
    gamma = Scope(
        kind=s.kind,
        gamma0=None if s.gamma0 == "auto" else float(s.gamma0),
        gamma1=gamma1,
        gamma_max=s.gamma_max,
        horizon=horizon,
    )
    rho = Scope(kind=s.kind, gamma0=s.rho0, gamma1=gamma1, gamma_max=s.rho_max, horizon=horizon)
    if config.algorithm.kind == "sgd":  # γ = 0: y independent replicas
        gamma = Scope(kind="constant", gamma0=0.0)
    return gamma, rho


def rescoped(config: Config, gamma: Scope, rho: Scope) -> tuple[Scope, Scope]:
    """A changed (allowed) scoping config: the new schedules, at the round reached."""
    new_gamma, new_rho = make_scopes(config)
    new_gamma.round, new_rho.round = gamma.round, rho.round
    if new_gamma.gamma0 is None:  # "auto" keeps what the first round measured
        new_gamma.gamma0, new_gamma.gamma1 = gamma.gamma0, gamma.gamma1
    return new_gamma, new_rho


def check_same_run(
    saved: dict[str, Any], now: dict[str, Any], where: str, allowed: tuple[str, ...] = ()
) -> None:
    """Refuse to resume a run directory with a config that trains something else.

    `allowed` names more keys (or sections) that may differ, e.g. the η and γ0 that
    Population Based Training perturbs when a trial takes over another's checkpoint.
    """
    for section, values in saved.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if {section, name} & {*RESUMABLE_CHANGES, *allowed}:
                continue
            current = now.get(section, {}).get(key)
            if current != value:
                raise ResumeMismatch(
                    f"{where} holds a run with {name} = {value!r}, not {current!r}: "
                    "use --fresh to start over, or another run.name"
                )
