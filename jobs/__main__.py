"""`python -m jobs <command> …`: the same as the `widevalley` console script."""

from jobs.cli import exit_now
from jobs.console import main

exit_now(main())
