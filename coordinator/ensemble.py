"""One evaluation round as a record: the center's, each replica's and the ensemble's numbers.

The replicas report their loss and metric and their test outputs (the first of them also
the center's numbers and the test targets); the ensemble averages the replicas' outputs
(class probabilities when the loss is cross entropy) and is scored here with the run's
loss and metric. The record's numbers then go into the metrics rows of the round.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from foundation.config import UNCOUPLED_ALGORITHMS
from foundation.ingredients import Ingredients
from foundation.registry import as_float

EVAL_KINDS = ("loss", "accuracy", "metric")
"""Every evaluation number is named <where>_test_<kind>; accuracy and metric only when
the run has that metric (train.metric)."""


def evaluation(round_: int, results: list[dict[str, Any]], parts: Ingredients) -> dict[str, Any]:
    """The record of an evaluation after `round_` rounds, from the replicas' reports."""
    outputs = [res.pop("test_outputs") for res in results]
    targets = results[0].pop("test_targets")
    center = results[0].pop("center")
    center.pop("test_outputs")
    return {"round": round_, "center": center, "replicas": results,
            **ensemble_scores(outputs, targets, parts)}  # fmt: skip


def ensemble_scores(
    outputs: list[np.ndarray], targets: np.ndarray, parts: Ingredients
) -> dict[str, float]:
    """ensemble_test_loss (and _accuracy or _metric) of the replicas' averaged outputs."""
    mean = np.mean(outputs, axis=0)
    if parts.classifies:  # averaged probabilities: the loss is their negative log-likelihood
        picked = mean[np.arange(len(targets)), targets]
        scores = {"ensemble_test_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean())}
    else:
        loss = parts.loss(torch.from_numpy(mean), torch.from_numpy(targets))
        scores = {"ensemble_test_loss": as_float(loss)}
    if parts.metric_name == "accuracy":
        scores["ensemble_test_accuracy"] = float((mean.argmax(1) == targets).mean())
    elif parts.metric is not None:
        value = parts.metric(torch.from_numpy(mean), torch.from_numpy(targets))
        scores[f"ensemble_test_{parts.metric_name}"] = as_float(value)
    return scores


def headline(parts: Ingredients, algorithm: str) -> tuple[str, str]:
    """The number a run is ranked by (Tune, sweeps, the comparison) and its direction:
    the test metric (higher is better), or the test loss when it has none, of the center;
    of the replicas' mean for uncoupled runs (sgd, esgd), whose center nobody trained."""
    where = "replica_mean" if algorithm in UNCOUPLED_ALGORITHMS else "center"
    if parts.metric_name is None:
        return f"{where}_test_loss", "min"
    return f"{where}_test_{parts.metric_name}", "max"


def replica_mean(record: dict[str, Any], kind: str) -> float:
    """The replicas' mean test number of `kind` in an evaluation record."""
    return float(np.mean([r[f"test_{kind}"] for r in record["replicas"]]))


def headline_value(record: dict[str, Any], name: str) -> float:
    """An evaluation record's number named as headline() names it."""
    where, kind = name.split("_test_")
    if where == "replica_mean":
        return replica_mean(record, kind)
    return float(record["center"][f"test_{kind}"])


def annotate(rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Put an evaluation's numbers into the metrics rows of the round it followed."""
    for row in rows:
        mine = record["replicas"][row["replica"]]
        for kind in EVAL_KINDS:
            if f"test_{kind}" in mine:
                row[f"test_{kind}"] = mine[f"test_{kind}"]
                row[f"center_test_{kind}"] = record["center"][f"test_{kind}"]
                row[f"ensemble_test_{kind}"] = record[f"ensemble_test_{kind}"]
