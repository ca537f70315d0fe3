"""What `python -m jobs.train` does once its arguments are parsed (jobs/train.py): check
the inputs, run on Ray, print the summary. Kept apart so that jobs/train.py can start
Ray before this module's imports (torch among them) have loaded."""

from __future__ import annotations

import argparse

from cluster import driver
from cluster.validate import check_parts, on_remote_cluster
from coordinator import checkpoint
from coordinator.lease import check_run_directory
from coordinator.report import summary_table
from coordinator.resume import check_same_run
from coordinator.rundir import RunDir
from foundation.config import (
    Config,
    check_batch_size,
    config_from_text,
    load_config,
    names_user_code,
    to_dict,
)
from foundation.data import load_dataset
from jobs.cli import guarded


def check_inputs(config: Config, fresh: bool) -> None:
    """Everything that can be checked before any actor starts (and before anything is
    written): storage, a run already writing there, a resume of another config, the
    data and, for user code, the model, data and loss together (cluster/validate.py)."""
    run = check_run_directory(config.run.storage, config.run.name)  # LeaseHeld: exit 2
    if not fresh and run.exists("config.toml") and run.child(checkpoint.FOLDER).list_dirs():
        saved = config_from_text(run.read_bytes("config.toml").decode())
        check_same_run(to_dict(saved), to_dict(config), str(run))
    if not names_user_code(config):  # builds the Parquet cache here; the replicas only read it
        data = load_dataset(config.data.dataset, config.data.root)
        check_batch_size(config, len(data.train.y))
    if not on_remote_cluster():  # else the driver checks in a Ray task, once connected
        check_parts(config, remote=False)


def run_command(args: argparse.Namespace) -> int:
    def body() -> int:
        config = load_config(args.config, args.overrides)
        check_inputs(config, args.fresh)
        summary = driver.run(config, fresh=args.fresh)
        print(summary_table(summary, RunDir(config.run.storage, config.run.name).path))
        return 0

    return guarded(body)
