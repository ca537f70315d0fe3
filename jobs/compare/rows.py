"""Table entries, read back from run directories only (summary.json and MEASURES_FILE).

Nothing a task returned is used here: a number in the table can always be traced to the
files of the run directory its row names. The row's test and train numbers are of the
run's headline kind (jobs/compare/headline.py): test_accuracy/train_accuracy, or
test_loss/train_loss for a run without a metric, or test_metric/train_metric.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from coordinator.rundir import RunDir
from jobs.compare.headline import Headline, headline_of
from jobs.compare.methods import LABELS, MEASURES_FILE, METHODS, REPLICA_ROWS
from jobs.compare.plan import Job

Row = dict[str, Any]
"""One table entry of one seed (also a row of compare.parquet / sweep.parquet)."""


def relative(path: str | os.PathLike[str]) -> str:
    """A path under the working directory (the repo) as relative to it; others as given.

    RESULTS.md and its files are committed: they must not carry this machine's paths.
    """
    text = os.fspath(path)
    if "://" in text or not os.path.isabs(text):
        return text
    here = os.getcwd()
    inside = os.path.commonpath([here, text]) == here
    return os.path.relpath(text, here) if inside else text


def _read_json(storage: str, name: str, file: str) -> dict[str, Any]:
    value: dict[str, Any] = RunDir(storage, name).read_json(file)
    return value


def _scores(
    method: str, s: dict[str, Any], m: dict[str, Any] | None, h: Headline
) -> tuple[float, float]:
    """(test, train) headline number of the row's model: mean replica, ensemble or center."""
    k = h.kind
    if method in REPLICA_ROWS:
        return float(np.mean(s[f"replica_test_{k}"])), float(np.mean(s[f"replica_train_{k}"]))
    if method == "ensemble":  # a sweep run has no measurements, so no ensemble train number
        return float(s[f"ensemble_test_{k}"]), (float(m[f"ensemble_train_{k}"]) if m else math.nan)
    return float(s[f"center_test_{k}"]), float(s[f"center_train_{k}"])


def _flatness_columns(method: str, m: dict[str, Any] | None, sigmas: tuple[float, float]) -> Row:
    """δE at the table's two σ, λ_max and the whole δE curve; nan / empty where there are
    none (a sweep run, or the ensemble, which is not one set of weights)."""
    flat = m if m is not None and method != "ensemble" else None
    grid = m["sigmas"] if m else []
    cols: Row = {}
    for k, sigma in enumerate(sigmas):
        cols[f"dE_{k}"] = flat["loss_delta"][grid.index(sigma)] if flat else math.nan
    cols["lambda_max"] = float(flat["lambda_max"]) if flat else math.nan
    cols["dE_curve"] = list(flat["loss_delta"]) if flat else []
    cols["sigmas"] = list(grid) if flat else []
    return cols


def row_of(job: Job, method: str, storage: str, sigmas: tuple[float, float]) -> Row:
    """One table entry of one seed, read back from the run directory only."""
    name = job.name
    s = _read_json(storage, name, "summary.json")
    m = _read_json(storage, name, MEASURES_FILE) if job.phase == "final" else None
    h = headline_of(s)
    test, train = _scores(method, s, m, h)
    row: Row = {
        "model": job.model, "method": method, "label": LABELS[method], "seed": job.seed,
        "phase": job.phase, "hyperparameters": " ".join(job.hp),
        "loss": job.config.train.loss, "headline": h.kind, "headline_mode": h.mode,
        h.test: test, h.train: train, "gap": h.gap(train, test),
        "wall_seconds": float(s["wall_seconds"]),
        "gradient_evaluations_per_replica": int(s["gradient_evaluations_per_replica"]),
        "replicas": int(s["replicas"]),
        "run_dir": relative(f"{storage.rstrip('/')}/{name}"),
        "summary_sha256": s["center_sha256"],
    }  # fmt: skip
    return row | _flatness_columns(method, m, sigmas)


def rows_of(jobs: list[Job], storage: str, sigmas: tuple[float, float]) -> list[Row]:
    """Every final job's row, plus the ensemble row of each sgd run, in table order."""
    rows = []
    for job in jobs:
        rows.append(row_of(job, job.method, storage, sigmas))
        if job.method == "sgd" and job.phase == "final":
            rows.append(row_of(job, "ensemble", storage, sigmas))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["model"], order[r["method"]], r["seed"]))
