"""Tier 3: the flatness report with one Ray task per model, against the in-process one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import Config
from jobs import flatness
from tests.support import ConfigFactory

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

FAST = [
    "--samples", "3", "--subset", "200", "--sigmas", "0", "0.25", "0.5",
    "--additive-sigmas", "0", "0.01", "0.02", "--top-k", "2", "--lanczos-steps", "30",
    "--trace-samples", "4", "--density-probes", "1", "--density-steps", "12",
]  # fmt: skip


def test_one_ray_task_per_model_gives_the_in_process_numbers(
    make_config: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    config: Config = make_config(name="flat")
    coordinator = Coordinator(config, LocalGroup)
    while not coordinator.done:
        coordinator.step()
    coordinator.finish()
    run = Path(config.run.storage) / "flat"

    assert flatness.main(["--run", str(run), "--local", *FAST]) == 0
    local = json.loads((run / "flatness.json").read_text())
    local_rows = pq.read_table(run / "flatness.parquet").to_pylist()
    capsys.readouterr()

    assert flatness.main(["--run", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    remote = json.loads((run / "flatness.json").read_text())
    assert "3 Ray tasks (one per model)" in out
    assert sum(": done in " in line for line in out.splitlines()) == 3
    assert remote["settings"]["execution"] == "ray"
    for name, model in remote["models"].items():
        assert model["measured_by"]["pid"] != os.getpid(), name  # measured in a Ray worker
        # Same seeds, one thread each: the same numbers to the last bit.
        assert model["top_eigenvalues"] == local["models"][name]["top_eigenvalues"]
        assert model["trace"] == local["models"][name]["trace"]
        assert model["local_energy"] == local["models"][name]["local_energy"]
    assert pq.read_table(run / "flatness.parquet").to_pylist() == local_rows
    assert (run / "plots" / "hessian.png").stat().st_size > 20_000
