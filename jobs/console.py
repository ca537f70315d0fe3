"""`widevalley <command> [options]`: the console script of the installed package.

Each command is the module of the same name under jobs/, with its own options:
`widevalley train --config run.toml --set algorithm.replicas=8` is
`python -m jobs.train --config run.toml --set algorithm.replicas=8`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

COMMANDS = {
    "train": "one coupled run (python -m jobs.train)",
    "sweep": "a Ray Tune sweep of runs (python -m jobs.sweep)",
    "flatness": "the flatness report of a run directory (python -m jobs.flatness)",
    "compare": "the comparison with the baselines (python -m jobs.compare)",
}


def _command(name: str) -> Callable[[list[str] | None], int]:
    """The command's main, imported only when it is the one asked for."""
    if name == "train":
        from jobs.train import main
    elif name == "sweep":
        from jobs.sweep.command import main
    elif name == "flatness":
        from jobs.flatness.command import main
    else:
        from jobs.compare.command import main
    return main


def usage() -> str:
    lines = ["usage: widevalley <command> [options]  (widevalley <command> --help)", ""]
    lines += [f"  {name:<9} {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # As `python -m` does: the current directory (a project, or the working dir of
    # `ray job submit`) is importable, so a config's import paths resolve from it.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"wv: error: unknown command {args[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    return _command(args[0])(args[1:])


if __name__ == "__main__":
    sys.exit(main())
