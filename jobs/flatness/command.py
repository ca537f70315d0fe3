"""`python -m jobs.flatness --run DIR [--baseline DIR]`: how flat is what a run found?

Measures the center, each replica and (with --baseline) the baseline run's center and
replicas from their newest verified checkpoints, with every measure of docs/algorithms.md:

- local energy δE(σ), multiplicative (w + σ z ⊙ w) and additive (w + σ z), loss and
  error deltas on train and test, Monte-Carlo over M draws per σ;
- the Hessian of the mean training loss: top-k eigenvalues (Lanczos), trace
  (Hutchinson) and spectral density (stochastic Lanczos quadrature).

All of them on a STATED subset: the first `--subset` training samples (and the first
`--subset` test samples for the test split of δE), with the run's own model, data and
loss (train.loss: cross-entropy, mse or a user's, through foundation.parts); the
test number the run is judged by (its accuracy, a user's metric, or its loss when it has
no metric) on the whole test set.
A center's BatchNorm statistics are recomputed first on the data the run trained on, as
its replicas do (averaged statistics do not belong to the averaged weights); a replica
keeps its own.

Writes flatness.parquet (a tidy long table), flatness.json (the summary),
plots/local_energy.png and plots/hessian.png into the run directory, and, with
--rescale-check ALPHA, rescale_check.json: every measure again after Dinh et al.'s
function-preserving α-rescaling, observed invariant or not against
landscape.INVARIANCE. By default each model is one Ray task (num_cpus=1); --local
measures in this process. Bad input: one line on stderr and exit status 2.

The measures themselves (inputs.prepare_model, measuring.measure,
running.measure_model) are plain functions: the Ray task only calls them. This module is
the command line; __main__.py only calls its main.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from foundation.config import Config
from foundation.fields import ConfigError
from jobs.cli import fail, guarded
from jobs.flatness.inputs import LoadedRun, dataset_of, model_specs, open_run
from jobs.flatness.report import write_outputs, written
from jobs.flatness.rows import Result
from jobs.flatness.running import run_measurements
from jobs.flatness.settings import FlatnessError, Settings
from jobs.flatness.tables import rescale_table, table, which_is_flatter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m jobs.flatness", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory, e.g. runs/default or s3://b/runs/x")
    p.add_argument("--baseline", help="a baseline run directory (e.g. an algorithm.kind=sgd run)")
    p.add_argument(
        "--rescale-check",
        type=float,
        metavar="ALPHA",
        dest="alpha",
        help="also measure every model after Dinh et al.'s α-rescaling (e.g. 10)",
    )
    p.add_argument(
        "--samples", type=int, default=d.samples, help="M, noise draws per σ (%(default)s)"
    )
    p.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=list(d.sigmas),
        help="multiplicative σ grid (relative; default 0 … 0.5 in 11 steps)",
    )
    p.add_argument(
        "--additive-sigmas",
        type=float,
        nargs="+",
        default=list(d.additive_sigmas),
        help="additive σ grid (absolute, weight units; default 0 … 0.05 in 11 steps)",
    )
    p.add_argument(
        "--subset",
        type=int,
        default=d.subset,
        help="first N training (and test) samples to measure on (%(default)s)",
    )
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="top Hessian eigenvalues (%(default)s)"
    )
    p.add_argument(
        "--lanczos-steps",
        type=int,
        default=d.lanczos_steps,
        help="max HVPs for the top eigenvalues (%(default)s)",
    )
    p.add_argument(
        "--trace-samples", type=int, default=d.trace_samples, help="Hutchinson probes (%(default)s)"
    )
    p.add_argument(
        "--density-probes", type=int, default=d.density_probes, help="SLQ probes (%(default)s)"
    )
    p.add_argument(
        "--density-steps",
        type=int,
        default=d.density_steps,
        help="SLQ Lanczos steps per probe (%(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of every random draw, the same for every model (%(default)s)",
    )
    p.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="measure at most this many replicas per run (default: all)",
    )
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads per model, and CPUs per Ray task (%(default)s)",
    )
    p.add_argument("--local", action="store_true", help="measure in this process, without Ray")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Bad input (FlatnessError is a ConfigError, a data set, storage): one line, exit 2.
    return guarded(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = settings_from(args)
    run, baseline = _open_runs(args, settings)
    specs = model_specs(run, "run", args.max_replicas)
    if baseline is not None:
        specs += model_specs(baseline, "baseline", args.max_replicas)
    print(
        f"flatness: {len(specs)} models ({run.config.model.arch} on {run.config.data.dataset}), "
        f"first {settings.subset} training samples, M = {settings.samples}, seed {settings.seed}",
        flush=True,
    )
    try:
        results = run_measurements(specs, settings, local=args.local)
    except ConfigError:
        raise  # bad input found late (no GPU in the cluster): exit 2, as before any task
    except Exception as err:  # a task's failure: one line, not Ray's wrapped traceback
        if isinstance(getattr(err, "cause", None), ConfigError):
            raise  # e.g. a user module a worker node cannot import: exit 2, naming the key
        return fail(f"measuring failed: {_first_line(err)}", 1)
    summary = write_outputs(
        run,
        baseline,
        results,
        settings,
        execution="local" if args.local else "ray",
        wall_seconds=time.perf_counter() - started,
    )
    _print_report(run, results, summary, settings)
    return 0


def settings_from(args: argparse.Namespace) -> Settings:
    """The checked Settings of a command line, or FlatnessError."""
    return Settings(
        subset=args.subset,
        samples=args.samples,
        sigmas=tuple(args.sigmas),
        additive_sigmas=tuple(args.additive_sigmas),
        top_k=args.top_k,
        lanczos_steps=args.lanczos_steps,
        trace_samples=args.trace_samples,
        density_probes=args.density_probes,
        density_steps=args.density_steps,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        rescale_alpha=args.alpha,
    ).check()


def _open_runs(args: argparse.Namespace, settings: Settings) -> tuple[LoadedRun, LoadedRun | None]:
    """The run and the baseline, every input checked before any measurement starts."""
    if args.max_replicas is not None and args.max_replicas < 0:
        raise FlatnessError(f"--max-replicas must be >= 0, got {args.max_replicas}")
    run = open_run(args.run)
    baseline = open_run(args.baseline) if args.baseline else None
    if baseline is not None:
        _check_comparable(run, baseline)
    if args.local and settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise FlatnessError(f"--device {settings.device} --local: no CUDA device here")
    dataset_of(run.config)  # a missing data path fails here, before any task starts
    if baseline is not None:
        dataset_of(baseline.config)
    return run, baseline


def _check_comparable(run: LoadedRun, baseline: LoadedRun) -> None:
    """The same data, the same loss (the landscape measured) and the same metric (the
    test number printed beside it), or FlatnessError saying which differs."""
    mine, theirs = run.config, baseline.config
    if _data_name(theirs) != _data_name(mine):
        raise FlatnessError(
            f"the baseline was trained on {_data_name(theirs)}, the run on "
            f"{_data_name(mine)}: their flatness is not comparable"
        )
    if theirs.train.loss != mine.train.loss:
        raise FlatnessError(
            f"the baseline was trained with train.loss = {theirs.train.loss!r}, the run with "
            f"{mine.train.loss!r}: the landscapes of two losses are not comparable"
        )
    if baseline.parts.metric is not run.parts.metric:
        raise FlatnessError(
            f"the baseline is judged by train.metric = {theirs.train.metric!r}, the run by "
            f"{mine.train.metric!r}: set the same metric for both"
        )


def _data_name(config: Config) -> str:
    kwargs = config.data.kwargs
    return config.data.dataset + (f" {kwargs}" if kwargs else "")


def _first_line(err: Exception) -> str:
    """A failure as `Type: first line`; a Ray task's error is its cause's."""
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).splitlines() if line.strip()] or [""]
    return f"{type(cause).__name__}: {lines[0]}"


def _print_report(
    run: LoadedRun, results: list[Result], summary: dict[str, Any], settings: Settings
) -> None:
    print()
    print(table(results, settings))
    print()
    print(which_is_flatter(summary["verdicts"]))
    if settings.rescale_alpha is not None:
        print()
        print(rescale_table(results))
    seconds = summary["wall_seconds"]
    print(f"\nwrote {', '.join(written(settings))} in {run.run.path} ({seconds:.1f} s)")
