"""`python -m jobs.sweep --config SWEEP.toml [--set key=value ...]`: a Ray Tune sweep of runs.

A sweep TOML names a base run config (`base = "rsgd.toml"`, and/or inline [run],
[algorithm], … sections) and a [sweep] table: the metric, the number of samples, the
scheduler (fifo, asha or pbt) and [sweep.space], distributions over any config key.
Each trial is one ordinary Wide Valley run — the same Coordinator, its run directory
under <run.storage>/<sweep.name>/runs/<trial id> — that reserves its coordinator and
all its replicas at once in one placement group, and reports one Tune result per
evaluation round. PBT takes over a better trial's run checkpoint with a perturbed η and
γ0. At the end: trials.parquet (printed as a table), best.toml (ready for jobs.train)
and plots/sweep.png in the sweep directory. Bad input fails before anything starts,
with one line and exit status 2; `--set sweep.key=v` and `--set sweep.space.KEY={...}`
change the sweep, any other `--set` the base run config.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray

from cluster.session import connect
from foundation.config import check_batch_size
from foundation.data import load_dataset
from foundation.storage import Storage
from jobs.cli import add_run_options, fail, guarded
from jobs.sweep.resources import Bundle, concurrency, describe, trial_bundles, with_gpus
from jobs.sweep.results import Row, table_text, trial_rows, write_outputs
from jobs.sweep.sweepfile import Sweep, join, load_sweep
from jobs.sweep.tuner import fingerprint, make_tuner


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.sweep", description=__doc__.split("\n")[0]
    )
    add_run_options(
        parser,
        config_default=None,  # a sweep has no default file: --config is required
        config_help="sweep file (TOML with a [sweep] table)",
        set_help="override a run key (algorithm.replicas=2) or a sweep key "
        "(sweep.num_samples=8, sweep.space.algorithm.lr={grid=[0.05,0.1]}); repeatable",
        fresh_help="start over: delete this sweep's trials and results instead of resuming it",
    )
    return parser.parse_args(argv)


def check_inputs(sweep: Sweep, fresh: bool) -> None:
    """What can be checked before anything starts: storage, data set, batch size."""
    store = Storage(sweep.uri)
    store.check_writable()
    if fresh:
        for name in ("tune", "runs", "plots"):
            store.delete_dir(name)
    data = load_dataset(sweep.base.data.dataset, sweep.base.data.root)
    check_batch_size(sweep.base, len(data.train.y))


def held_out(sweep: Sweep) -> str:
    fraction = sweep.base.data.validation
    return f" on the held-out {fraction:g} of the training set" if fraction else ""


def announce(sweep: Sweep, bundles: list[Bundle], at_once: int, where: str) -> None:
    """One line: what the sweep runs, what each trial reserves, how many at once, where."""
    s = sweep.sweep
    space = ", ".join(f"{k} {d.describe()}" for k, d in sweep.space.items())
    units = f" + {len(bundles) - 1} × {describe(bundles[-1])} for replicas" * (len(bundles) > 1)
    print(
        f"wv: sweep {s.name}: {s.scheduler}, {s.num_samples} sample(s) of {space}; "
        f"{s.direction} {s.metric}{held_out(sweep)}; each trial reserves "
        f"{describe(bundles[0])} for its coordinator{units or ' and in-process replicas'}, "
        f"{at_once} trial(s) at once, "
        f"on {where}",
        flush=True,
    )


def run(sweep: Sweep, fresh: bool = False) -> tuple[list[Row], Row | None]:
    """Run the sweep on the connected (or a new local) Ray; returns the rows and the best."""
    # Trials see paths as jobs.train's actors do: relative to the job's working directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    where = connect()
    cluster = ray.cluster_resources()
    sweep = with_gpus(sweep, cluster)
    bundles = trial_bundles(sweep, cluster)
    at_once = concurrency(sweep, bundles, cluster)
    announce(sweep, bundles, at_once, where)
    started = time.time()
    tuner = make_tuner(sweep, bundles, at_once, fresh)
    Storage(sweep.uri).write_bytes("sweep.json", json.dumps(fingerprint(sweep), indent=1).encode())
    rows = trial_rows(sweep, tuner.fit())
    best = write_outputs(sweep, rows)
    print(table_text(sweep, rows))
    print(f"{len(rows)} trials in {time.time() - started:.1f} s · sweep directory {sweep.uri}")
    if best is not None:
        metric = sweep.sweep.metric
        print(
            f"best: {best['trial']} with {metric} {best[metric]:.4f} → "
            f"python -m jobs.train --config {join(sweep.uri, 'best.toml')}"
        )
    return rows, best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        sweep = load_sweep(args.config, args.overrides)
        check_inputs(sweep, args.fresh)
        rows, _ = run(sweep, fresh=args.fresh)
        # A failed trial fails the sweep (exit 1), after its results are written.
        errors = [str(r["trial"]) for r in rows if r["status"] == "error"]
        if errors:
            return fail(f"{len(errors)} trial(s) failed: {', '.join(errors)}", 1)
        return 0

    return guarded(body)
