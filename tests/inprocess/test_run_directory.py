"""Tier 2: a run directory nobody can clobber (docs/run-directory.md).

Each test reproduces a finding of an adversarial operator: a run name that escapes
run.storage (and --fresh deleting there), two writers on one directory, a disk that
fills up mid-run, and metrics.parquet's numbering and types.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import foundation.storage
from coordinator import checkpoint
from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup, ReplicaLost, RoundOutcome
from coordinator.lease import Lease, LeaseHeld
from coordinator.rundir import METRICS_SCHEMA, RunDir
from foundation.config import Config
from foundation.storage import StorageError, name_problem
from jobs import CONFIG_DIR, train
from tests.faulty_fs import FaultyHandler
from tests.support import ConfigFactory


def finish(coordinator: Coordinator) -> dict[str, object]:
    while not coordinator.done:
        coordinator.step()
    summary = coordinator.finish()
    coordinator.shutdown()
    return summary


# ---- 1. a run name is a name -------------------------------------------------------


def smoke_args(tmp_path: Path, data_root: Path, *sets: str) -> list[str]:
    args = ["--config", str(CONFIG_DIR / "smoke.toml"), "--set", f"data.root={data_root}"]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.mark.parametrize("name", ["../victim", "/abs/victim", "..", "a/b"])
def test_a_run_name_that_leaves_the_storage_fails_and_fresh_deletes_nothing(
    name: str, make_config: ConfigFactory, tmp_path: Path, data_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    runs = tmp_path / "runs"
    finish(Coordinator(make_config(f"run.storage={runs}", name="victim"), LocalGroup))
    before = sorted(str(p.relative_to(runs)) for p in runs.rglob("*"))
    args = smoke_args(tmp_path, data_root, f"run.storage={runs / 'st'}", f"run.name={name}",
                      "train.rounds=3")  # fmt: skip
    assert train.main([*args, "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"wv: error: run.name = {name!r}") and "\n" not in err, err
    assert sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) == before


def test_names_the_sweep_and_the_comparison_build_are_plain_names() -> None:
    for name in ("sweep-cnn1d-parle-gamma0=0.03,rho0=0.05", "arch=mypkg.nets:GRUNet",
                 "run_trial_6b2e1_00003", "mlp-diloco-s4"):  # fmt: skip
        assert name_problem(name) is None, name


def test_fresh_deletes_only_what_a_run_wrote(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(name="mine")
    finish(Coordinator(config, LocalGroup))
    run = Path(config.run.storage) / "mine"
    (run / "notes.txt").write_text("the user's own file")
    (run / "analysis").mkdir()
    finish(Coordinator(config, LocalGroup, fresh=True))
    assert (run / "notes.txt").read_text() == "the user's own file" and (run / "analysis").is_dir()


def test_a_file_uri_is_a_local_directory(make_config: ConfigFactory, tmp_path: Path) -> None:
    """run.storage = file:///… failed every run at its first event (no folder made)."""
    config = make_config(f"run.storage=file://{tmp_path / 'by-uri'}", name="uri")
    summary = finish(Coordinator(config, LocalGroup))
    run = tmp_path / "by-uri" / "uri"
    assert summary["rounds"] == 4 and (run / "summary.json").is_file()
    assert [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert checkpoint.rounds(RunDir(config.run.storage, "uri")) == [4]


def test_damaged_records_are_set_aside_and_the_run_resumes(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """A truncated metrics.parquet (ArrowInvalid: Parquet magic bytes) and events/*.json
    that do not parse (JSONDecodeError, TypeError) blocked resuming for good."""
    config = make_config("train.rounds=6", "train.checkpoint_every=2", name="damaged")
    crashed = Coordinator(config, LocalGroup)
    for _ in range(4):
        crashed.step()
    crashed.shutdown()  # as a killed driver leaves it: checkpoints at 2 and 4, no end
    run = Path(config.run.storage) / "damaged"
    metrics = run / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:-200])
    (run / "events" / "9999999999999-garbage.json").write_text('{"time": 1, "ev')
    (run / "events" / "9999999999999-alist.json").write_text("[1, 2]")
    resumed = Coordinator(config, LocalGroup)
    assert resumed.resumed_from == 4
    summary = finish(resumed)
    assert summary["rounds"] == 6
    aside = [e for e in resumed.run.events() if e["event"] == "record_set_aside"]
    assert sorted(e["name"] for e in aside) == [
        "events/9999999999999-alist.json", "events/9999999999999-garbage.json",
        "metrics.parquet",
    ], aside  # fmt: skip
    assert len(list((run / "damaged").iterdir())) == 3  # kept, not deleted
    rows = pq.read_table(metrics).to_pylist()  # the rows from the resume on
    assert {r["round"] for r in rows} == {5, 6}


# ---- 2. one writer at a time ---------------------------------------------------------


def test_a_second_coordinator_on_a_held_directory_fails_naming_the_holder(
    make_config: ConfigFactory,
) -> None:
    first = Coordinator(make_config(name="twice"), LocalGroup)
    with pytest.raises(LeaseHeld, match=rf"twice is being written by .*pid {os.getpid()} on "):
        Coordinator(make_config(name="twice"), LocalGroup)
    first.step()
    first.shutdown()  # the lease goes with it
    second = Coordinator(make_config(name="twice"), LocalGroup)
    assert second.resumed_from is None
    second.shutdown()


def test_jobs_train_on_a_held_directory_is_one_line_and_exit_2(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    holder = Lease(RunDir(str(runs), "smoke").storage, job="raysubmit_123").acquire()
    try:
        assert train.main(smoke_args(tmp_path, data_root, f"run.storage={runs}")) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err.strip()
    assert "is being written by job raysubmit_123, pid" in err and "\n" not in err, err
    assert not (runs / "smoke" / "config.toml").exists(), "nothing may be written"


def test_events_of_two_writers_are_all_kept(tmp_path: Path) -> None:
    a, b = RunDir(str(tmp_path), "shared"), RunDir(str(tmp_path), "shared")
    a.event("first", by="a")
    b.event("second", by="b")  # b never read a's event into memory
    a.event("third", by="a")
    assert [e["event"] for e in RunDir(str(tmp_path), "shared").events()] == [
        "first", "second", "third",
    ]  # fmt: skip
    view = (tmp_path / "shared" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in view] == ["first", "second", "third"]


# ---- 3. storage that fails mid-run ------------------------------------------------


def faulty(monkeypatch: pytest.MonkeyPatch, handler: FaultyHandler) -> None:
    monkeypatch.setattr(foundation.storage, "local_filesystem", lambda: pafs.PyFileSystem(handler))


@pytest.mark.parametrize(
    ("what", "handler", "message"),
    [
        ("disk full in a checkpoint",
         FaultyHandler(lambda p: "round-000004" in p and "state.pt" in p, errno.ENOSPC, room=64),
         r"cannot write .*/checkpoints/\.tmp-round-000004-\w+/state\.pt: No space left on device"),
        ("permission lost on the metrics",
         FaultyHandler(lambda p: "metrics.parquet" in p, errno.EACCES),
         r"cannot write .*/metrics\.parquet: Permission denied"),
    ],
    ids=["ENOSPC", "EACCES"],
)  # fmt: skip
def test_a_storage_failure_stops_with_one_line_keeps_good_checkpoints_and_resume_cleans_up(
    what: str, handler: FaultyHandler, message: str, make_config: ConfigFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    sets = ["train.rounds=6", "train.checkpoint_every=2", "train.eval_every=3"]
    whole = finish(Coordinator(make_config(*sets, name="whole"), LocalGroup))
    config = make_config(*sets, name="broken")
    coordinator = Coordinator(config, LocalGroup)
    coordinator.step()
    coordinator.step()  # checkpoint of round 2: written while storage still works
    faulty(monkeypatch, handler)
    coordinator.run = RunDir(config.run.storage, config.run.name)  # now on the faulty disk
    with pytest.raises(StorageError, match=message) as failure:
        finish(coordinator)
    assert "\n" not in str(failure.value)
    monkeypatch.undo()
    run = RunDir(config.run.storage, config.run.name)
    assert run.events()[-1]["event"] == "stopped", what
    assert checkpoint.load_latest(run) is not None and 2 in checkpoint.rounds(run)
    resumed = Coordinator(config, LocalGroup)
    assert resumed.resumed_from == 2
    removed = [e for e in resumed.run.events() if e["event"] == "leftovers_removed"]
    if "state.pt" in message:  # the half-written checkpoint's folder is swept away
        assert removed and any(".tmp-round-000004" in n for n in removed[0]["names"])
    assert finish(resumed)["center_sha256"] == whole["center_sha256"]
    leftovers = [p for p in Path(run.path).rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


# ---- 5. metrics.parquet ------------------------------------------------------------


class LosesReplicaOne(LocalGroup):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.calls = 0

    def run_round(self, center: object, gamma: float, rho: float) -> list[RoundOutcome]:
        out = super().run_round(center, gamma, rho)  # type: ignore[arg-type]
        if self.calls == 1:
            self.lost_units.add(1)
            out[1] = ReplicaLost("RuntimeError: injected")
        self.calls += 1
        return out


def test_metrics_rounds_count_from_one_and_two_runs_tables_concatenate(
    make_config: ConfigFactory,
) -> None:
    plain = Coordinator(make_config(name="plain"), LocalGroup)
    finish(plain)
    failing = Coordinator(make_config(name="failing"), LosesReplicaOne)
    finish(failing)
    tables = [pq.read_table(Path(c.run.path) / "metrics.parquet") for c in (plain, failing)]
    assert all(t.schema.equals(METRICS_SCHEMA) for t in tables)
    assert tables[0].schema.field("failure").type == pa.string()
    both = pa.concat_tables(tables)
    assert both.num_rows == 16
    assert sorted(set(tables[0].column("round").to_pylist())) == [1, 2, 3, 4]
    assert plain.evaluations[-1]["round"] == 4 and plain.round == 4
    failed = [r for r in tables[1].to_pylist() if r["failure"]]
    assert [(r["round"], r["replica"]) for r in failed] == [(2, 1)]
    events = [e for e in failing.run.events() if e["event"] == "replica_restarted"]
    assert [e["round"] for e in events] == [2]  # the same numbering as the metrics
