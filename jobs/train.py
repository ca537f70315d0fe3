"""`python -m jobs.train [--config PATH] [--set section.key=value ...]`: one coupled run.

Attaches to RAY_ADDRESS's cluster (as under `ray job submit`), to a cluster `ray start`
left running on this machine, or starts a local Ray (cluster/session.py); starts the
Coordinator actor (which starts the replica actors), prints one line per round and a
summary table, and leaves everything in <run.storage>/<run.name>/. Running the same
command again resumes from the run's last good checkpoint (--fresh starts over). Bad
input fails before any actor starts, with one line and exit status 2; a run that fails
while training exits with 1, its metrics and events kept.
"""

from __future__ import annotations

import argparse

from cluster import driver
from cluster.validate import check_parts, names_user_code, on_remote_cluster
from coordinator import checkpoint
from coordinator.lease import check_free
from coordinator.report import summary_table
from coordinator.resume import check_same_run
from coordinator.rundir import RunDir
from foundation.config import Config, check_batch_size, config_from_text, load_config, to_dict
from foundation.data import load_dataset
from foundation.storage import Storage
from jobs import CONFIG_DIR
from jobs.cli import add_run_options, exit_now, guarded

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description=__doc__.split("\n")[0]
    )
    add_run_options(parser, config_default=str(DEFAULT_CONFIG), config_help="run config (TOML)")
    return parser.parse_args(argv)


def check_inputs(config: Config, fresh: bool) -> None:
    """Everything that can be checked before any actor starts (and before anything is
    written): storage, a run already writing there, a resume of another config, the
    data and, for user code, the model, data and loss together (cluster/validate.py)."""
    Storage(config.run.storage).check_writable()
    run = Storage(config.run.storage).child(config.run.name)  # not created here
    check_free(run)  # another run writing here: one line naming it, exit 2
    if not fresh and run.exists("config.toml") and run.child(checkpoint.FOLDER).list_dirs():
        saved = config_from_text(run.read_bytes("config.toml").decode())
        check_same_run(to_dict(saved), to_dict(config), str(run))
    if not names_user_code(config):  # builds the Parquet cache here; the replicas only read it
        data = load_dataset(config.data.dataset, config.data.root)
        check_batch_size(config, len(data.train.y))
    if not on_remote_cluster():  # else the driver checks in a Ray task, once connected
        check_parts(config, remote=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        config = load_config(args.config, args.overrides)
        check_inputs(config, args.fresh)
        summary = driver.run(config, fresh=args.fresh)
        print(summary_table(summary, RunDir(config.run.storage, config.run.name).path))
        return 0

    return guarded(body)


if __name__ == "__main__":
    exit_now(main())
