"""`python -m jobs.train [--config PATH] [--set section.key=value ...]`: one coupled run.

Attaches to RAY_ADDRESS's cluster (as under `ray job submit`), to a cluster `ray start`
left running on this machine, or starts a local Ray (cluster/session.py); starts the
Coordinator (which starts the replica actors; cluster/driver.py says where it runs),
prints one line per round and a summary table, and leaves everything in
<run.storage>/<run.name>/. Running the same command again resumes from the run's last
good checkpoint (--fresh starts over). Bad input fails before any actor starts, with
one line and exit status 2; a run that fails while training exits with 1, its metrics
and events kept.

main() is the whole path: the config is loaded and its run directory found free once,
then Ray starts on a thread while torch and the rest are imported and the other inputs
are checked (cluster/validate.py), then cluster/driver.py runs it. A config that names
user code starts no Ray before that code is checked: a mistake in it is the likeliest
bad input.
"""

from __future__ import annotations

import argparse
import sys

from jobs import CONFIG_DIR
from jobs.cli import add_run_options, exit_codes, exit_now

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description=__doc__.split("\n")[0]
    )
    add_run_options(parser, config_default=str(DEFAULT_CONFIG), config_help="run config (TOML)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Neither Ray nor torch: benchmarks/p5_startup.py --phases times each step here.
    from cluster.stopping import stop_at_once_on_signals
    from coordinator.lease import check_run_directory
    from foundation.config import load_config, names_user_code

    with stop_at_once_on_signals(), exit_codes() as status:  # until the polite stop takes over
        config = load_config(args.config, args.overrides)
        run = check_run_directory(config.run.storage, config.run.name)
        try:
            if not names_user_code(config):
                from cluster.session import connect_in_background  # Ray, not torch

                connect_in_background()  # overlaps the imports and checks below
            from cluster import driver  # torch, the coordinator
            from cluster.validate import check_inputs
            from coordinator.report import summary_table
        except KeyboardInterrupt as stop:  # here, before exit_codes() can say it
            status.code = stopped_at_once(stop)
            return status.code
        check_inputs(config, run, args.fresh)
        summary = driver.run(config, fresh=args.fresh)
        print(summary_table(summary, str(run)))
    return status.code


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
