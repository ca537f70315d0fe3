"""What every command line here shares: errors as exit codes (its run options and its
exit are in jobs/entry.py, which imports neither torch nor Ray).

Bad input (a config, a data set, resources the cluster lacks, a run directory that holds
another run, storage that cannot be written) is one line on stderr and exit status 2;
a failure while running (an actor's error) is one line and exit status 1. Nothing is
printed as a traceback that a user would have to read.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import ray

from cluster.driver import CoordinatorError, one_line
from cluster.resources import ResourceError
from cluster.session import release
from cluster.stopping import RunInterrupted, signals_ignored
from coordinator.lease import LeaseHeld
from coordinator.resume import ResumeMismatch
from foundation.data import DatasetError
from foundation.fields import ConfigError
from foundation.storage import StorageError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, ResourceError, ResumeMismatch, LeaseHeld, OSError,
)  # fmt: skip


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
    # First: Ray's errors may subclass the cause's. An error the Coordinator raised in an
    # actor (RayError) or in this process (CoordinatorError) counts the same.
    except (ray.exceptions.RayError, CoordinatorError) as err:
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
    except KeyboardInterrupt as err:  # a second stop signal, or Ctrl-C before the first round
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"wv: stopped at once by {signal.Signals(signum).name}; run the same command "
              "again to resume from the last checkpoint", file=sys.stderr)  # fmt: skip
        return 128 + signum
    finally:
        with signals_ignored():  # an impatient Ctrl-C must not cut the clean-up short
            release()  # the private local Ray this command started, if it started one
