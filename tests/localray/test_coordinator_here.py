"""Tier 3: the Coordinator in the driver process (cluster/driver.py, HostHere), as
`python -m jobs.train` runs it on the private local Ray that it starts. The Ray of these
tests is the fixture's, so owns_ray() is patched to say this process started it."""

from pathlib import Path
from typing import NoReturn

import pytest

from cluster import driver
from coordinator.failures import RunFailed
from foundation.config import Config, load_config
from jobs import CONFIG_DIR
from jobs.cli import guarded

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def smoke(tmp_path: Path, data_root: Path, name: str, *sets: str) -> Config:
    where = [f"run.storage={tmp_path}", f"run.name={name}", f"data.root={data_root}"]
    return load_config(CONFIG_DIR / "smoke.toml", [*where, *sets])


def no_actor() -> NoReturn:
    raise AssertionError("the Coordinator was started as an actor")


def test_the_coordinator_in_the_driver_computes_what_the_actor_does(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_actor = driver.run(smoke(tmp_path, data_root, "actor"))
    monkeypatch.setattr(driver, "owns_ray", lambda: True)
    monkeypatch.setattr(driver, "HostActor", no_actor)
    here = driver.run(smoke(tmp_path, data_root, "here"))
    assert here["center_sha256"] == as_actor["center_sha256"]
    assert here["rounds"] == as_actor["rounds"] == 20


def test_a_replica_error_is_its_own_one_line_exit_1_and_frees_the_run(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(driver, "owns_ray", lambda: True)
    config = smoke(tmp_path, data_root, "raising", "train.loss=tests.badparts:raising_loss")
    # A replica that raises is restarted as a lost one; every replica raising in round 1
    # fails the run (RunFailed, naming what they raised), as from the actor.
    with pytest.raises(RunFailed, match="raised ValueError: the loss refuses") as failure:
        driver.run(config)
    assert isinstance(failure.value, driver.CoordinatorError)
    assert type(failure.value.cause) is RunFailed
    capsys.readouterr()

    # Again through the command's handling: not LeaseHeld (exit 2), so the first run gave
    # its run directory back; one line, without Ray's traceback.
    def command() -> int:
        driver.run(config)
        return 0

    assert guarded(command) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("wv: error: RunFailed: every replica failed in round 1: {0: 'lost: ")
    assert line.endswith("raised ValueError: the loss refuses'}"), line
