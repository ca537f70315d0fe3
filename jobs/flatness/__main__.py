"""`python -m jobs.flatness`. Only calls main: Ray pickles the functions and classes of
__main__ by value, and a worker cannot find __main__'s module-level helpers, so the real
code lives in importable modules (jobs.flatness.command and the ones it imports)."""

from jobs.cli import exit_now
from jobs.flatness.command import main

exit_now(main())
