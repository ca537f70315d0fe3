"""What every command line here shares: its run options, errors as exit codes, and its
exit (cluster/fast_start.py's exit_now). This module imports neither torch nor Ray, so
that `python -m jobs.train` can read its arguments and config and start Ray before the
heavy imports (jobs/train.py).

Bad input (a config, a data set, resources the cluster lacks, a run directory that holds
another run, storage that cannot be written) is one line on stderr and exit status 2;
a failure while running (an actor's error) is one line and exit status 1. Nothing is
printed as a traceback that a user would have to read.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cluster.fast_start import exit_now as exit_now  # what every command ends with
from cluster.stopping import RunInterrupted, signals_ignored


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


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are bad input (exit 2). Imported when an error is being mapped:
    a command that fails before its heavy imports pays for them then, not before."""
    from cluster.resources import ResourceError
    from coordinator.lease import LeaseHeld
    from coordinator.resume import ResumeMismatch
    from foundation.data import DatasetError
    from foundation.fields import ConfigError

    return ConfigError, DatasetError, ResourceError, ResumeMismatch, LeaseHeld, OSError


def fail(message: str, code: int) -> int:
    print(f"wv: error: {message}", file=sys.stderr)
    return code


@dataclass
class Status:
    code: int = 0


@contextlib.contextmanager
def exit_codes(more_user_errors: tuple[type[BaseException], ...] = ()) -> Iterator[Status]:
    """Around a command's body: bad input → exit 2 (also when an actor found it), a
    failure while running → exit 1, a stop on SIGTERM/SIGINT → 143/130; always one
    line, the status in the Status it yields. A private local Ray that the body started
    is stopped on the way out."""
    status = Status()
    try:
        yield status
    except Exception as err:
        code = exit_code(err, (*user_errors(), *more_user_errors))
        if code is None:
            raise
        status.code = code
    except KeyboardInterrupt as err:  # a second stop signal, or Ctrl-C before the first round
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"wv: stopped at once by {signal.Signals(signum).name}; run the same command "
              "again to resume from the last checkpoint", file=sys.stderr)  # fmt: skip
        status.code = 128 + signum
    finally:
        session = sys.modules.get("cluster.session")  # only an imported one started Ray
        if session is not None:
            with signals_ignored():  # an impatient Ctrl-C must not cut the clean-up short
                session.release()  # the private local Ray this command started, if any


def exit_code(err: Exception, bad_input: tuple[type[BaseException], ...]) -> int | None:
    """The exit status of a command that raised `err`, its line said; None: not ours to
    map (a bug shows its traceback)."""
    import ray

    from cluster.driver import CoordinatorError, one_line
    from foundation.storage import StorageError

    # First: Ray's errors may subclass the cause's. An error the Coordinator raised in an
    # actor (RayError) or in this process (CoordinatorError) counts the same.
    if isinstance(err, ray.exceptions.RayError | CoordinatorError):
        cause = getattr(err, "cause", None)
        # Storage that fails mid-run is a failed run (1), not bad input.
        if isinstance(cause, bad_input) and not isinstance(cause, StorageError):
            return fail(str(cause), 2)
        return fail(one_line(err), 1)
    if isinstance(err, bad_input):
        return fail(str(err), 2)
    if isinstance(err, RunInterrupted):
        print(f"wv: {err}", file=sys.stderr)
        return err.exit_code
    return None


def guarded(body: Callable[[], int], more_user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """`body()`'s exit status, its errors mapped as exit_codes() does."""
    with exit_codes(more_user_errors) as status:
        status.code = body()
    return status.code
