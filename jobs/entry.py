"""What every command line shares that needs neither torch nor Ray: its run options and
how it exits. `python -m jobs.train` reads its arguments and config with this alone,
then starts Ray before the heavy imports (jobs/train.py); guarded() in jobs/cli.py
turns errors into exit statuses."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from typing import NoReturn


def add_run_options(
    parser: argparse.ArgumentParser,
    *,
    config_default: str | None,
    config_help: str,
    set_help: str = "override one config key, e.g. --set algorithm.replicas=8 (repeatable)",
    fresh_help: str = "start over: delete this run's checkpoints, metrics and events "
    "instead of resuming",
) -> None:
    """--config (required when it has no default), --set KEY=VALUE (repeatable), --fresh."""
    parser.add_argument(
        "--config", default=config_default, required=config_default is None, help=config_help
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=set_help,
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help=fresh_help)


def exit_now(code: int) -> NoReturn:
    """Exit with `code` as `sys.exit` would, less the interpreter's teardown of its modules.

    The exit handlers run (logging's, W&B's, those of imported user code) and the output
    is flushed; what is skipped is freeing the modules one by one, which after a run
    took longer than the rest of the exit on the 2-core box (torch's, gRPC's and Ray's
    libraries) and frees nothing the OS does not take back. For
    `python -m` entry points only: a function called in-process must return instead."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
