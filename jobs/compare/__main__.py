"""`python -m jobs.compare`: only the entry point.

Ray pickles functions defined in `__main__` by value, so everything a task runs lives in
importable modules of this package and this file only calls the command line.
"""

from jobs.cli import exit_now
from jobs.compare.command import main

exit_now(main())
