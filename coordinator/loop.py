"""The one loop that steps a run to its end: the command line (cluster/driver.py), the
Python API (widevalley/api.py) and the comparison's runs (jobs/compare/task.py) all go
through drive().

It asks its run for rounds in batches of about BATCH_S seconds (Coordinator.advance:
one call per round would add a call's round trip to every round, a visible share of a
small model's), says one progress line per round, logs it to the tracker and hands it
to `on_progress`; after each batch, `after_batch` (the command line's stop on a signal
and the private Ray's dashboard). At the last round it finishes the run and returns
the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from coordinator.report import progress_line

BATCH_S = 0.25
"""Rounds per call last about this long: progress lines and a stop on a signal lag by
at most this much (plus one round)."""


class Steppable(Protocol):
    """A Coordinator, or the host that holds one (cluster/driver.py)."""

    def advance(self, budget_s: float) -> list[dict[str, Any]]:
        """Rounds until `budget_s` seconds have passed (at least one) or the run is done;
        one progress record each."""
        ...

    def finish(self) -> dict[str, Any]: ...


class Tracker(Protocol):
    def log(self, progress: dict[str, Any]) -> None: ...


def drive(
    run: Steppable, at: int, rounds: int, *, say: Callable[[str], None] | None = None,
    tracker: Tracker | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
    after_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Step `run` from round `at` to `rounds` and finish it; returns its summary."""
    budget = 0.0  # the first round is shown as soon as it is done
    while at < rounds:
        for progress in run.advance(budget):
            if say is not None:
                say(progress_line(progress, rounds))
            if tracker is not None:
                tracker.log(progress)
            if on_progress is not None:  # an evaluated round is always a batch's last
                on_progress(progress)
            at = progress["round"]
        budget = BATCH_S
        if after_batch is not None:
            after_batch()
    return run.finish()
