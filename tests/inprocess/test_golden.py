"""Tier 2: golden trajectories: a few rounds of every algorithm on a tiny config.

Each case runs the Coordinator with in-process replicas and compares, round by round,
a fingerprint of the center (its sum, its sum of squares and 24 fixed entries) and the
mean training loss with tests/golden/trajectories.json, within a tolerance: exact
hashes differ between CPU models, a changed formula or order of updates does not hide
in 1e-4. Regenerate the file only on purpose, with

    WV_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/inprocess/test_golden.py

and say in the commit why the numbers moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import load_config

GOLDEN = Path(__file__).parent.parent / "golden" / "trajectories.json"
REGENERATE = os.environ.get("WV_REGENERATE_GOLDEN") == "1"
ROUNDS = 3
ENTRIES = 24
RTOL, ATOL = 1e-4, 1e-5

CASES: dict[str, list[str]] = {
    "sgd": ["algorithm.kind=sgd"],
    "rsgd": ["algorithm.kind=rsgd", "scoping.gamma0=0.1"],
    "rsgd_auto": ["algorithm.kind=rsgd", "scoping.gamma0=auto", "scoping.gamma_max=10"],
    "esgd": ["algorithm.kind=esgd", "algorithm.coupling_period=2", "algorithm.inner_steps=3",
             "algorithm.lr=1.0", "scoping.gamma0=0.03"],
    "parle": ["algorithm.kind=parle", "algorithm.coupling_period=2", "algorithm.inner_steps=3",
              "algorithm.lr=0.5", "scoping.gamma0=0.03", "scoping.rho0=0.05",
              "scoping.rho_max=1"],
    "easgd": ["algorithm.kind=easgd", "scoping.kind=constant", "scoping.gamma0=1.0",
              "scoping.gamma_max=1.0"],
    "rsgd_cnn1d": ["algorithm.kind=rsgd", "model.arch=cnn1d", "scoping.gamma0=0.1"],
    "easgd_scoped": ["algorithm.kind=easgd", "scoping.gamma0=0.2", "scoping.gamma_max=2"],
    "diloco": ["algorithm.kind=diloco"],
    "localsgd": ["algorithm.kind=localsgd"],
}  # fmt: skip


def fingerprint(center: torch.Tensor) -> dict[str, Any]:
    values = center.double()
    picks = np.linspace(0, len(values) - 1, ENTRIES).round().astype(int)
    return {
        "sum": float(values.sum()),
        "sum_sq": float(values.pow(2).sum()),
        "entries": [float(values[i]) for i in picks],
    }


def trajectory(case: str, tmp_path: Path, data_root: Path) -> list[dict[str, Any]]:
    config = load_config(
        None,
        [
            f"run.storage={tmp_path}",
            f"run.name={case}",
            f"data.root={data_root}",
            "algorithm.replicas=2",
            "algorithm.coupling_period=5",
            f"train.rounds={ROUNDS}",
            f"train.eval_every={ROUNDS}",
            "scoping.gamma1=0.5",
            *CASES[case],
        ],
    )
    coordinator = Coordinator(config, LocalGroup)
    out = []
    while not coordinator.done:
        progress = coordinator.step()
        assert coordinator.center is not None
        out.append({"loss": progress["mean_loss"], **fingerprint(coordinator.center)})
    coordinator.shutdown()
    return out


def _close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    else:
        assert abs(got - want) <= ATOL + RTOL * abs(want), f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_trajectory(case: str, tmp_path: Path, data_root: Path) -> None:
    got = trajectory(case, tmp_path, data_root)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if REGENERATE:
        golden[case] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert case in golden, f"no golden trajectory for {case}: set WV_REGENERATE_GOLDEN=1"
    _close(got, golden[case], case)


def test_every_golden_case_is_still_run() -> None:
    """A case removed from CASES must also leave the file (stale goldens check nothing)."""
    if not REGENERATE:
        assert set(json.loads(GOLDEN.read_text())) == set(CASES)
