"""`python -m jobs.train [--config PATH] [--set section.key=value ...]`: one coupled run.

Attaches to RAY_ADDRESS's cluster (as under `ray job submit`), to a cluster `ray start`
left running on this machine, or starts a local Ray (cluster/session.py); starts the
Coordinator (which starts the replica actors; cluster/driver.py says where it runs),
prints one line per round and a summary table, and leaves everything in
<run.storage>/<run.name>/. Running the same command again resumes from the run's last
good checkpoint (--fresh starts over). Bad input fails before any actor starts, with
one line and exit status 2; a run that fails while training exits with 1, its metrics
and events kept.
"""

from __future__ import annotations

import argparse
import sys

from jobs import CONFIG_DIR
from jobs.entry import add_run_options, exit_now

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description=__doc__.split("\n")[0]
    )
    add_run_options(parser, config_default=str(DEFAULT_CONFIG), config_help="run config (TOML)")
    return parser.parse_args(argv)


def start_ray_early(args: argparse.Namespace) -> None:
    """Start Ray on a thread now if the config loads, its storage can be written and its
    run directory is free, so that Ray's start-up (much of it waiting for its own
    processes) overlaps the imports of torch and the rest and the input checks
    (benchmarks/p5_startup.py --phases times each step).

    Bad input found here starts nothing: the command finds it again and reports it, with
    no Ray started. Nor does a config that names user code: that code is checked first,
    with no Ray, and a mistake in it is the likeliest bad input. Bad data found later
    (a missing data set) waits for the Ray start under way to finish and stops it."""
    from cluster.session import connect_in_background  # Ray, not torch
    from coordinator.lease import check_run_directory
    from foundation.config import load_config, names_user_code  # no torch: names.py

    try:
        config = load_config(args.config, args.overrides)
        check_run_directory(config.run.storage, config.run.name)
    except Exception:  # the command finds it again and says what it is
        return
    if not names_user_code(config):
        connect_in_background()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cluster.stopping import stop_at_once_on_signals  # neither Ray nor torch

    with stop_at_once_on_signals():  # until the run's polite stop takes over
        try:
            start_ray_early(args)
            from jobs.training import run_command  # torch, the coordinator, the input checks
        except KeyboardInterrupt as stop:  # here, before guarded() can say it
            return stopped_at_once(stop)
        return run_command(args)


def stopped_at_once(stop: KeyboardInterrupt) -> int:
    """A stop signal in the command's first seconds: the Ray start under way is stopped,
    one line, 128 + the signal's number."""
    import signal

    signum = getattr(stop, "signum", signal.SIGINT)
    # Only a session module that was imported whole can have started Ray: one whose
    # import the signal cut short is gone from sys.modules, and importing it again
    # would meet Ray's half-imported package.
    session = sys.modules.get("cluster.session")
    if session is not None:
        session.release()
    print(f"wv: stopped at once by {signal.Signals(signum).name}, before the run began",
          file=sys.stderr)  # fmt: skip
    return 128 + signum


if __name__ == "__main__":
    exit_now(main())
