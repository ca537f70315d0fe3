"""What every command line here shares: --config/--set/--fresh, and errors as exit codes.

Bad input (a config, a data set, resources the cluster lacks, a run directory that holds
another run, storage that cannot be written) is one line on stderr and exit status 2;
a failure while running (an actor's error) is one line and exit status 1. Nothing is
printed as a traceback that a user would have to read.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import ray

from cluster.driver import one_line
from cluster.resources import ResourceError
from cluster.session import release
from cluster.stopping import RunInterrupted
from coordinator.lease import LeaseHeld
from coordinator.resume import ResumeMismatch
from foundation.data import DatasetError
from foundation.fields import ConfigError
from foundation.storage import StorageError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, ResourceError, ResumeMismatch, LeaseHeld, OSError,
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
    """Run a command's body; bad input → exit 2 (also when an actor found it), a failure
    while running → exit 1, a stop on SIGTERM/SIGINT → 143/130; always one line. A
    private local Ray that the body started is stopped before this returns."""
    bad_input = (*USER_ERRORS, *user_errors)
    try:
        return body()
    except ray.exceptions.RayError as err:  # first: Ray's errors may subclass the cause's
        cause = getattr(err, "cause", None)
        # Storage that fails mid-run is a failed run (1), not bad input.
        if isinstance(cause, bad_input) and not isinstance(cause, StorageError):
            return fail(str(cause), 2)
        return fail(one_line(err), 1)
    except bad_input as err:
        return fail(str(err), 2)
    except RunInterrupted as err:
        print(f"wv: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        release()  # the private local Ray this command started, if it started one


def exit_now(code: int) -> NoReturn:
    """Exit with `code` as `sys.exit` would, less the interpreter's teardown of its modules.

    The exit handlers run (logging's, W&B's, those of imported user code) and the output
    is flushed; what is skipped is freeing the modules one by one, which after a run
    took 1.3 s on the 2-core box (torch's, gRPC's and Ray's libraries; P7 in
    docs/performance.md) and frees nothing that the OS does not take back at once. For
    `python -m` entry points only: a function called in-process must return instead."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
