"""`python -m jobs.sweep`: the command line lives in jobs.sweep.command, because Ray
pickles what `__main__` defines by value and the trainable must be importable."""

from jobs.cli import exit_now
from jobs.sweep.command import main

exit_now(main())
