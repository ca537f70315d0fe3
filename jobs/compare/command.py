"""`python -m jobs.compare --config jobs/configs/compare_mnist1d.toml`: the reproduction table.

The command line: the protocol file as the options adjust it, every run config and the
data checked before any Ray task starts, then the driver. Errors map to exit codes as in
every command here (jobs/cli.py): bad input is one line and exit status 2, a failed
run one line and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cluster.session import connect
from cluster.validate import check_parts
from coordinator.rundir import RunDir
from foundation.config import load_config, names_user_code
from foundation.data import load_dataset
from jobs import CONFIG_DIR
from jobs.cli import guarded
from jobs.compare import driver
from jobs.compare.plan import Job, final_jobs, sweep_jobs, untuned
from jobs.compare.protocol import CompareError, FlatnessSpec, Protocol, load_protocol


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=str(CONFIG_DIR / "compare_mnist1d.toml"))
    parser.add_argument("--seeds", type=int, default=None, help="final seeds (default: config)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="gradient evaluations per replica for every model (default: config)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="quick_seeds seeds and quick_steps steps (a smoke run)"
    )
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--storage", default=None, help="run directories (default: config)")
    parser.add_argument("--output", default=None, help="where RESULTS.md and results/ go")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override for every run, e.g. data.root=/data",
    )
    parser.add_argument(
        "--flatness",
        action="append",
        default=[],
        metavar="KEY=N",
        help="flatness setting for every model: subset, draws or lanczos_steps (e.g. draws=4)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    return parser.parse_args(argv)


def flatness_overrides(flat: FlatnessSpec, items: Sequence[str]) -> FlatnessSpec:
    """--flatness subset=50 --flatness draws=4: smaller measurements (tests, quick looks)."""
    allowed = ("subset", "draws", "lanczos_steps")
    for item in items:
        key, _, raw = item.partition("=")
        if (
            key not in allowed
            or not raw.isdigit()
            or int(raw) < (2 if key != "lanczos_steps" else 1)
        ):
            raise CompareError(
                f"--flatness {item!r}: expected one of {', '.join(allowed)} = N >= 2"
            )
        changes: dict[str, Any] = {key: int(raw)}
        flat = replace(flat, **changes)
    return flat


def _absolute(path: str) -> str:
    """Ray tasks may run in another working directory; URLs (s3://…) are kept as they are."""
    return path if "://" in path else os.path.abspath(path)


@dataclass(frozen=True)
class Plan:
    """What this invocation runs: the protocol as the options adjusted it, and the budget."""

    protocol: Protocol
    seeds: int
    steps: dict[str, int]
    root: str  # data.root, absolute: the data cache every task reads

    @property
    def extra(self) -> list[str]:
        """Overrides for every run after the protocol's own."""
        return [f"data.root={self.root}"]


def _protocol(args: argparse.Namespace) -> Protocol:
    """The protocol file with --models, --storage, --output, --set and --flatness applied."""
    p = load_protocol(args.config)
    models = tuple(args.models.split(",")) if args.models else p.models
    unknown = [m for m in models if m not in p.steps]
    if unknown:
        raise CompareError(f"--models {','.join(unknown)}: not in the config's compare.steps")
    p = replace(
        p, models=models,
        storage=_absolute(args.storage or p.storage), output=args.output or p.output,
        overrides=(*p.overrides, *args.overrides),
    )  # fmt: skip
    return replace(p, flatness=flatness_overrides(p.flatness, args.flatness))


def plan_of(args: argparse.Namespace) -> Plan:
    """--seeds, --steps and --quick over the protocol's budget."""
    p = _protocol(args)
    seeds = args.seeds or (p.quick_seeds if args.quick else p.seeds)
    if args.steps is not None:
        steps = dict.fromkeys(p.models, args.steps)
    else:
        steps = {m: p.quick_steps if args.quick else p.steps[m] for m in p.models}
    root = load_config(CONFIG_DIR / "default.toml", list(p.overrides)).data.root
    return Plan(p, seeds, steps, _absolute(root))


def check_parts_of(final: Sequence[Job]) -> None:
    """Before any task starts, once per model: a built-in data set's cache is built (the
    tasks only read it), and a model, data, loss or metric named by import path is
    imported, built and given one batch, as jobs.train checks a run (cluster/validate.py):
    a failure is one line naming its config key, exit status 2."""
    for config in {job.model: job.config for job in final}.values():
        if names_user_code(config):
            check_parts(config, remote=False)  # the data is read from here, as below
        else:
            load_dataset(config.data.dataset, config.data.root)


def say(line: str) -> None:
    print(line, flush=True)  # flushed: the console shows progress while tasks run


def run(args: argparse.Namespace, command: str, started: float) -> int:
    """Check everything, then sweep, run and report; raises what guarded() maps to codes."""
    plan = plan_of(args)
    p = plan.protocol
    sweep = sweep_jobs(p, plan.steps, plan.extra)
    # Every final run config is checked now (with no hyperparameters yet), before any run.
    final = final_jobs(p, plan.steps, plan.seeds, untuned(p), plan.extra)
    check_parts_of(final)
    where = connect()
    say(f"wv compare: {len(sweep)} sweep runs, then {len(final)} final runs, on {where}")
    if args.fresh:  # only the run directories this comparison writes, nothing else there
        for job in (*sweep, *final):
            RunDir(p.storage, job.config.run.name).clear()
    outcome = driver.compare(
        p, sweep, steps=plan.steps, seeds=plan.seeds, extra=plan.extra, say=say
    )
    seconds = time.time() - started
    text = driver.publish(p, outcome, command=command, seconds=seconds, seeds=plan.seeds,
                          steps=plan.steps, quick=args.quick)  # fmt: skip
    say(text.split("## Results", 1)[1].split("\n![", 1)[0].strip())  # the tables
    out = Path(p.output)
    say(f"wrote {out / 'RESULTS.md'} and {out / 'results'}/ in {seconds / 60:.1f} min")
    return 0


def shown_command(argv: Sequence[str]) -> str:
    """The command as RESULTS.md records it: paths under the working directory (the repo)
    relative to it, also inside KEY=VALUE, so no machine's own paths are committed."""
    here = os.getcwd()
    words = ["." if a == here else a.replace(here + os.sep, "") for a in argv]
    return "python -m jobs.compare " + shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    command = shown_command(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: run(args, command, started))
