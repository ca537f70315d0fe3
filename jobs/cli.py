"""What every command line here shares: --config/--set/--fresh, and errors as exit codes.

Bad input (a config, a data set, resources the cluster lacks, a run directory that holds
another run, storage that cannot be written) is one line on stderr and exit status 2;
a failure while running (an actor's error) is one line and exit status 1. Nothing is
printed as a traceback that a user would have to read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import ray

from cluster.actors import ResourceError
from cluster.driver import one_line
from coordinator.resume import ResumeMismatch
from foundation.data import DatasetError
from foundation.fields import ConfigError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, ResourceError, ResumeMismatch, OSError,
)  # fmt: skip


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


def fail(message: str, code: int) -> int:
    print(f"wv: error: {message}", file=sys.stderr)
    return code


def guarded(body: Callable[[], int], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body; bad input → exit 2, an actor's failure → exit 1, one line."""
    try:
        return body()
    except (*USER_ERRORS, *user_errors) as err:
        return fail(str(err), 2)
    except ray.exceptions.RayError as err:
        return fail(one_line(err), 1)
