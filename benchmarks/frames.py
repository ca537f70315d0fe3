"""How deep the default path is: the frames of this repository's code on the stack
from `python -m jobs.train`'s main() to the first local SGD step, counted in a real run.

    .venv/bin/python benchmarks/frames.py [--config jobs/configs/smoke.toml]

The command's own path (a private local Ray, the Coordinator in this process), with one
change so that the first step happens here, where a profiler sees it: the replicas are
the in-process group (coordinator/groups.py's LocalGroup) instead of Ray actors. It
prints each frame (file:line function) from main() down to the first call of
flatmath.local_steps.momentum_step_, which is the first local step's update, and their
number: frames of code under this repository, the step function included, not
torch's, Ray's or the standard library's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STEP = ("momentum_step_", str(REPO / "flatmath" / "local_steps.py"))
ENTRY = ("main", str(REPO / "jobs" / "train.py"))


def ours(filename: str) -> bool:
    path = Path(filename).resolve()
    return path.is_relative_to(REPO) and ".venv" not in path.parts


def stack_of(frame: FrameType) -> list[FrameType]:
    """`frame` and its callers, outermost first."""
    frames: list[FrameType] = []
    caller: FrameType | None = frame
    while caller is not None:
        frames.append(caller)
        caller = caller.f_back
    return frames[::-1]


class FirstStep:
    """A profiler that keeps the stack of the first call to the step function."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, int, str]] | None = None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event != "call" or self.stack is not None:
            return
        if (code.co_name, code.co_filename) != STEP:
            return
        frames = [(f.f_code.co_filename, f.f_lineno, f.f_code.co_name) for f in stack_of(frame)]
        entry = next(i for i, (file, _, name) in enumerate(frames) if (name, file) == ENTRY)
        self.stack = [f for f in frames[entry:] if ours(f[0])]
        sys.setprofile(None)
        threading.setprofile(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="jobs/configs/smoke.toml")
    args = parser.parse_args()

    import cluster.driver
    from coordinator.groups import LocalGroup
    from jobs import train

    def in_process(config: Any) -> Any:
        return LocalGroup

    cluster.driver.replica_group_class = in_process
    watcher = FirstStep()
    with tempfile.TemporaryDirectory() as storage:
        argv = ["--config", str(REPO / args.config), "--fresh",
                "--set", f"run.storage={storage}", "--set", "train.rounds=1"]  # fmt: skip
        threading.setprofile(watcher)
        sys.setprofile(watcher)
        try:
            train.main(argv)
        finally:
            sys.setprofile(None)
    if watcher.stack is None:
        print("frames: no local step was seen", file=sys.stderr)
        return 1
    for file, line, name in watcher.stack:
        print(f"  {Path(file).relative_to(REPO)}:{line} {name}")
    files = len({file for file, _, _ in watcher.stack})
    print(f"frames: {len(watcher.stack)} of this repository's code, over {files} files, "
          "from jobs/train.py main() to the first local step")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
