"""Tier 1: scoping schedules at r = 0, 1 and R against their closed forms."""

import json
import math

import pytest

from flatmath.scoping import Scope, auto_gamma0, auto_gamma1, gamma_at


def test_constant() -> None:
    s = Scope(kind="constant", gamma0=0.3, gamma_max=1.0, horizon=10)
    assert [s.value(r) for r in (0, 1, 10)] == [0.3, 0.3, 0.3]


def test_exponential_doubles_and_clips() -> None:
    s = Scope(kind="exponential", gamma0=0.01, gamma1=1.0, gamma_max=0.05, horizon=10)
    got = [s.value(r) for r in (0, 1, 2, 3, 10)]
    assert got == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05], abs=1e-15)


def test_linear() -> None:
    s = Scope(kind="linear", gamma0=0.1, gamma_max=1.1, horizon=4)
    assert [s.value(r) for r in (0, 1, 4, 8)] == pytest.approx([0.1, 0.35, 1.1, 1.1])


def test_cosine() -> None:
    s = Scope(kind="cosine", gamma0=0.0, gamma_max=2.0, horizon=4)
    # γmax/2 (1 − cos(π r/R)): r=1 → 1 − cos(π/4) = 0.29289321881345254
    got = [s.value(r) for r in (0, 1, 2, 4)]
    assert got == pytest.approx([0.0, 0.29289321881345254, 1.0, 2.0], abs=1e-12)


def test_clipping_holds_for_every_schedule() -> None:
    for kind in ("constant", "exponential", "linear", "cosine"):
        for r in range(0, 50, 7):
            assert gamma_at(kind, r, gamma0=3.0, gamma1=0.5, gamma_max=2.0, horizon=5) <= 2.0


def test_the_counter_really_advances() -> None:
    s = Scope(kind="exponential", gamma0=1.0, gamma1=0.5, horizon=10)
    assert [s.step() for _ in range(3)] == [1.5, 2.25, 3.375]
    assert s.round == 3 and s.value() == 3.375


def test_automatic_gamma0_and_gamma1() -> None:
    assert auto_gamma0(2.0, 0.5) == 4.0
    assert auto_gamma1(0.01, 1.0, 2) == pytest.approx(9.0)
    s = Scope(kind="exponential", gamma0=None, gamma1=None, gamma_max=1.0, horizon=2)
    assert s.value() == 0.0, "uncoupled until the first round is measured"
    s.calibrate(mean_train_loss=0.02, mean_half_sq_distance=2.0)
    assert s.gamma0 == pytest.approx(0.01) and s.gamma1 == pytest.approx(9.0)
    assert s.value(2) == pytest.approx(1.0)
    s.calibrate(mean_train_loss=5.0, mean_half_sq_distance=1.0)
    assert s.gamma0 == pytest.approx(0.01), "calibration happens once"


def test_a_measured_gamma0_past_the_clip_holds_the_clip_instead_of_failing() -> None:
    """auto γ0 with auto γ1 used to raise in round 0 when the measured γ0 > γmax."""
    s = Scope(kind="exponential", gamma0=None, gamma1=None, gamma_max=1.0, horizon=10)
    s.calibrate(mean_train_loss=2.0, mean_half_sq_distance=0.5)  # γ0 = 4 > γmax = 1
    assert s.gamma0 == pytest.approx(4.0) and s.gamma1 == 0.0
    assert [s.value(r) for r in (0, 1, 10)] == [1.0, 1.0, 1.0]


def test_automatic_gamma_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="differ"):
        auto_gamma0(1.0, 0.0)
    with pytest.raises(ValueError, match="gamma_max"):
        auto_gamma1(0.1, math.inf, 10)


def test_state_round_trips_through_a_plain_dict_and_json() -> None:
    s = Scope(kind="cosine", gamma0=0.1, gamma_max=3.0, horizon=7)
    for _ in range(4):
        s.step()
    state = json.loads(json.dumps(s.state_dict()))
    restored = Scope.from_state_dict(state)
    assert restored == s and restored.value() == s.value() and restored.round == 4
    assert restored.step() == s.step()


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="exponential"):
        Scope(kind="sawtooth")
