"""What the report writes into the run directory: flatness.parquet (the tidy rows),
flatness.json (the summary), the two plots and, with --rescale-check, rescale_check.json."""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.flatness.inputs import LoadedRun, dataset_of
from jobs.flatness.rescaling import RESCALE_SUMMARY, expected_of, observed_of
from jobs.flatness.rows import SCHEMA, Result, Row
from jobs.flatness.settings import LOWER_IS_FLATTER, MEASURES, Settings, loss_words
from jobs.flatness.verdicts import verdicts
from landscape import INVARIANCE, INVARIANCE_NOTES, NOISES


def written(settings: Settings) -> list[str]:
    """The files write_outputs writes, relative to the run directory."""
    names = ["flatness.parquet", "flatness.json", "plots/local_energy.png", "plots/hessian.png"]
    return [*names, "rescale_check.json"] if settings.rescale_alpha is not None else names


def write_outputs(
    run: LoadedRun,
    baseline: LoadedRun | None,
    results: list[Result],
    settings: Settings,
    *,
    execution: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """Write every output file next to the run; returns flatness.json's content."""
    from jobs.flatness.plots import hessian_png, local_energy_png  # matplotlib only here

    rows = [row for r in results for row in r["rows"]]
    summary = report(
        run, baseline, results, settings, execution=execution, wall_seconds=wall_seconds
    )
    out = run.run
    out.write_bytes("flatness.parquet", parquet_bytes(rows))
    out.write_json("flatness.json", summary)
    subset = summary["settings"]["hessian_data"]
    loss = loss_words(run.config.train.loss)
    out.write_bytes("plots/local_energy.png", local_energy_png(rows, settings.samples, loss))
    out.write_bytes("plots/hessian.png", hessian_png(rows, subset, loss))
    if settings.rescale_alpha is not None:
        out.write_json(
            "rescale_check.json", _finite(rescale_summary(results, settings.rescale_alpha))
        )
    return summary


def parquet_bytes(rows: list[Row]) -> bytes:
    # Bytes, not a path: the run directory may be on S3 (RunDir writes either).
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), sink)
    return sink.getvalue()


def report(
    run: LoadedRun,
    baseline: LoadedRun | None,
    results: list[Result],
    settings: Settings,
    *,
    execution: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """flatness.json's content."""
    base_algorithm = baseline.config.algorithm.kind if baseline else None
    return _finite(
        {
            "run": run.run.path,
            "round": run.round,
            "algorithm": run.config.algorithm.kind,
            "arch": run.config.model.arch,
            "dataset": dataset_of(run.config).name,
            "loss": run.config.train.loss,
            "headline": results[0]["summary"]["headline"] if results else None,
            "baseline": None if baseline is None else _baseline(baseline),
            "settings": _settings(run, settings, execution),
            "invariance": {
                m: {"invariant": INVARIANCE[m], "note": INVARIANCE_NOTES[m]} for m in MEASURES
            },
            "models": {r["name"]: _model(r) for r in results},
            "verdicts": verdicts(results, settings, base_algorithm),
            "wall_seconds": wall_seconds,
        }
    )


def _baseline(baseline: LoadedRun) -> dict[str, Any]:
    return {
        "run": baseline.run.path,
        "round": baseline.round,
        "algorithm": baseline.config.algorithm.kind,
        "arch": baseline.config.model.arch,
    }


def _settings(run: LoadedRun, settings: Settings, execution: str) -> dict[str, Any]:
    """The settings, and in words what data each measure saw (the stated subsets)."""
    data = dataset_of(run.config)
    n_train = min(settings.subset, len(data.train.y))
    n_test = min(settings.subset, len(data.test.y))
    total_train, total_test = len(data.train.y), len(data.test.y)
    return {
        **{k: v for k, v in asdict(settings).items() if k != "rescale_alpha"},
        "subset_train": n_train,
        "subset_test": n_test,
        "hessian_data": f"the first {n_train} of the {total_train} {data.name} training samples",
        "local_energy_data": {
            "train": f"the first {n_train} of the {total_train} training samples",
            "test": f"the first {n_test} of the {total_test} test samples",
        },
        "test_data": f"all {total_test} test samples",
        "report_sigmas": {n: list(settings.report_sigmas(n)) for n in NOISES},
        "execution": execution,
        "rule": LOWER_IS_FLATTER,
    }


def _model(r: Result) -> dict[str, Any]:
    """One model's entry: where it came from, then its summary."""
    keys = ("group", "role", "run", "round", "arch", "parameters", "batchnorm", "measured_by")
    return {**{k: r[k] for k in keys}, **r["summary"]}


def rescale_summary(results: list[Result], alpha: float) -> dict[str, Any]:
    """rescale_check.json: per measure, observed against expected; per model, the check."""
    checked = [r for r in results if "measures" in r.get("rescale", {})]
    per_measure = {}
    for name in MEASURES:
        entries = [r["rescale"]["measures"][name] for r in checked]
        observed, expected = observed_of(entries), expected_of(name)
        per_measure[name] = {
            "observed": observed if entries else None,
            "expected": expected,
            "matches": observed == expected if entries else None,
            "note": INVARIANCE_NOTES[name],
            "what_the_ratio_is_of": RESCALE_SUMMARY[name],
            "ratio": {r["name"]: r["rescale"]["measures"][name]["ratio"] for r in checked},
        }
    return {
        "alpha": alpha,
        "test": "a measure changed if any of its estimates moved by more than 3 combined "
        "standard errors (plus 1e-4 relative rounding), the same seeds before and after",
        "measures": per_measure,
        "models": {r["name"]: r["rescale"] for r in results if "rescale" in r},
    }


def _finite(value: Any) -> Any:
    """JSON without NaN/inf (not JSON): they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
