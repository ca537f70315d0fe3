"""The driver: the sweep, the choice of hyperparameters, the final runs, then the report.

Runs are Ray tasks (task.run_job); everything after them is read back from their run
directories (rows.py), so a second invocation over finished run directories rebuilds
the same table without training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.config import to_toml
from jobs.compare.figures import headline_png, plots, write_parquet
from jobs.compare.headline import headline_of_rows
from jobs.compare.plan import Choice, Job, final_jobs
from jobs.compare.protocol import FlatnessSpec, Protocol
from jobs.compare.reading import chosen_json
from jobs.compare.report import Invocation, render, versions
from jobs.compare.rows import Row, row_of, rows_of
from jobs.compare.task import run_job

Say = Callable[[str], None]
INVOCATIONS_FILE = "invocations.json"  # under <output>/results/
CHOSEN_FILE = "chosen.json"  # under <output>/results/: model → method → overrides


@dataclass(frozen=True)
class Outcome:
    """What one invocation ran and read back: the report is made from this alone."""

    final: list[Job]
    rows: list[Row]
    sweep_rows: list[Row]
    chosen: Choice
    trained: int
    reused: int


def run_all(jobs: list[Job], flat: FlatnessSpec, say: Say) -> list[dict[str, Any]]:
    """One Ray task per job (num_cpus = 1); returns results in job order."""
    import ray

    task: Any = ray.remote(num_cpus=1, max_retries=0)(run_job)
    refs = [task.remote(to_toml(j.config), j.method, j.phase, flat) for j in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    pending, started = list(refs), time.time()
    while pending:  # in the order they finish, so progress lines come as runs end
        ready, pending = ray.wait(pending, num_returns=1)
        i = index[ready[0]]
        result: dict[str, Any] = ray.get(ready[0])
        results[i] = result
        note = " (reused)" if result["reused"] else ""
        say(f"[{len(jobs) - len(pending)}/{len(jobs)}] {jobs[i].name}{note}  "
            f"{time.time() - started:.0f} s")  # fmt: skip
    return [r for r in results if r is not None]


def choose(jobs: Sequence[Job], sweep_rows: Sequence[Row]) -> Choice:
    """Per (model, method), the tried values with the best validation headline (the
    highest accuracy or metric, the lowest loss; the first of equals, in sweep order).
    A sweep run's "test" numbers are on the validation split (data.validation)."""
    h = headline_of_rows(sweep_rows)
    chosen: Choice = {}
    best: dict[tuple[str, str], float] = {}
    for job, row in zip(jobs, sweep_rows, strict=True):
        key, value = (job.model, job.method), float(row[h.test])
        # A non-finite number (a diverged run's loss) never beats a finite one.
        finite, held = math.isfinite(value), math.isfinite(best.get(key, math.nan))
        if key not in best or (finite and (not held or h.better(value, best[key]))):
            best[key], chosen[key] = value, job.hp
    return chosen


def compare(
    p: Protocol, sweep: list[Job], *, steps: dict[str, int], seeds: int, extra: Sequence[str],
    say: Say,
) -> Outcome:  # fmt: skip
    """Run the sweep, choose, run the final jobs with the chosen values; read the rows."""
    results = run_all(sweep, p.flatness, say)
    sweep_rows = [row_of(j, j.method, p.storage, p.flatness.table_sigmas) for j in sweep]
    chosen = choose(sweep, sweep_rows)
    for (model, method), hp in sorted(chosen.items()):
        say(f"chosen for {model} {method}: {' '.join(hp) or 'base config'}")
    final = final_jobs(p, steps, seeds, chosen, extra)
    results += run_all(final, p.flatness, say)
    reused = sum(bool(r["reused"]) for r in results)
    rows = rows_of(final, p.storage, p.flatness.table_sigmas)
    return Outcome(final, rows, sweep_rows, chosen, len(results) - reused, reused)


def _reused_sentence(outcome: Outcome) -> str:
    if not outcome.reused:
        return ""
    return (
        f"{outcome.reused} of {outcome.trained + outcome.reused} runs were finished run "
        "directories of an earlier invocation, reused as they are (their training time is not "
        "in this figure; `results/invocations.json`)"
    )


def _log_invocation(
    log: Path, outcome: Outcome, command: str, seconds: float, date: str
) -> list[dict[str, Any]]:
    """Append this invocation to the log; a fresh start (nothing reused) starts it over."""
    history: list[dict[str, Any]] = (
        json.loads(log.read_text()) if outcome.reused and log.exists() else []
    )
    history.append({"date": date, "command": command, "minutes": seconds / 60,
                    "trained": outcome.trained, "reused": outcome.reused})  # fmt: skip
    log.write_text(json.dumps(history, indent=2) + "\n")
    return history


def publish(
    p: Protocol, outcome: Outcome, *, command: str, seconds: float, seeds: int,
    steps: dict[str, int], quick: bool,
) -> str:  # fmt: skip
    """Write <output>/RESULTS.md and <output>/results/; returns the RESULTS.md text."""
    out = Path(p.output)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_parquet(results / "compare.parquet", outcome.rows)
    write_parquet(results / "sweep.parquet", outcome.sweep_rows)
    score_png, energy_png = plots(p, outcome.rows)
    (results / headline_png(outcome.rows)).write_bytes(score_png)
    (results / "local_energy.png").write_bytes(energy_png)
    env = versions()
    history = _log_invocation(results / INVOCATIONS_FILE, outcome, command, seconds, env["date"])
    inv = Invocation(command=command, seconds=seconds, seeds=seeds, steps=steps, quick=quick,
                     versions=env, reused=_reused_sentence(outcome), history=tuple(history),
                     runs=outcome.trained + outcome.reused)  # fmt: skip
    rounds = {(j.model, j.method): j.config.train.rounds for j in outcome.final}
    # The choice as overrides of each base config, for updating the shipped configs.
    chosen = chosen_json(p, outcome.chosen, outcome.sweep_rows, rounds)
    (results / CHOSEN_FILE).write_text(json.dumps(chosen, indent=2) + "\n")
    text = render(p, outcome.rows, outcome.sweep_rows, outcome.chosen, inv, rounds)
    (out / "RESULTS.md").write_text(text)
    return text
