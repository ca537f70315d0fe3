"""`python -m jobs <command> …`: the same as the `widevalley` console script."""

from jobs.console import main
from jobs.entry import exit_now

exit_now(main())
