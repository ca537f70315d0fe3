"""`python -m jobs <command> …`: the same as the `widevalley` console script."""

import sys

from jobs.console import main

sys.exit(main())
