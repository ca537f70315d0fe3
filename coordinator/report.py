"""The run report: each evaluation as a record, summary.json, the center's sha256, the
training plot, and the lines a person reads (one per round, and the final table).

An evaluation record holds the center's, each replica's and the ensemble's numbers. The
replicas report their loss and metric and their test outputs (the first of them also
the center's numbers and the test targets); the ensemble averages the replicas' outputs
(class probabilities when the loss is cross entropy) and is scored here with the run's
loss and metric. The record's numbers then go into the metrics rows of the round.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foundation.config import ENTROPY_ALGORITHMS, UNCOUPLED_ALGORITHMS, Config
from foundation.parts import Parts, as_float

EVAL_KINDS = ("loss", "accuracy", "metric")
"""Every evaluation number is named <where>_test_<kind>; accuracy and metric only when
the run has that metric (train.metric)."""


def evaluation(round_: int, results: list[dict[str, Any]], parts: Parts) -> dict[str, Any]:
    """The record of an evaluation after `round_` rounds, from the replicas' reports."""
    outputs = [res.pop("test_outputs") for res in results]
    targets = results[0].pop("test_targets")
    center = results[0].pop("center")
    center.pop("test_outputs")
    return {"round": round_, "center": center, "replicas": results,
            **ensemble_scores(outputs, targets, parts)}  # fmt: skip


def ensemble_scores(
    outputs: list[np.ndarray], targets: np.ndarray, parts: Parts
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


def headline(parts: Parts, algorithm: str) -> tuple[str, str]:
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


def center_sha256(center: Tensor, num_params: int) -> str:
    """sha256 of the center's flat float32 parameter bytes: one name for one model."""
    return hashlib.sha256(
        center[:num_params].to(torch.float32).contiguous().numpy().tobytes()
    ).hexdigest()


def gradient_evaluations(config: Config, rounds: int) -> int:
    """Gradient evaluations per replica in `rounds` rounds (L inner steps per outer step)."""
    algo = config.algorithm
    inner = algo.inner_steps if algo.kind in ENTROPY_ALGORITHMS else 1
    return rounds * algo.coupling_period * inner


UNTRAINED_CENTER = (
    "the replicas trained independently (no coupling): the center is the mean of their "
    "weights, a model no step trained; the run is ranked by the replicas' mean"
)


def summary(
    config: Config,
    rounds: int,
    last: dict[str, Any],
    final_rows: list[dict[str, Any]],
    center: Tensor,
    num_params: int,
    parts: Parts,
) -> dict[str, Any]:
    """summary.json without its timing: the final evaluation `last`, the last round's rows.
    Always the losses; the accuracy (or a user metric) only when the run has one;
    `headline` names the number the run is ranked by, `headline_mode` its direction."""
    distances = [r["distance_to_center"] for r in final_rows if r["distance_to_center"] is not None]
    name, mode = headline(parts, config.algorithm.kind)
    out: dict[str, Any] = {
        "run": config.run.name,
        "algorithm": config.algorithm.kind,
        "replicas": len(last["replicas"]),
        "rounds": rounds,
        "gradient_evaluations_per_replica": gradient_evaluations(config, rounds),
        "headline": name,
        "headline_mode": mode,
        "mean_distance_to_center": float(np.mean(distances)) if distances else None,
        "final_gamma": final_rows[0]["gamma"],
        "center_sha256": center_sha256(center, num_params),
    }
    kinds = ["loss"] + ([parts.metric_name] if parts.metric_name else [])
    for kind in kinds:
        out[f"center_test_{kind}"] = last["center"][f"test_{kind}"]
        out[f"center_train_{kind}"] = last["center"][f"train_{kind}"]
        out[f"replica_test_{kind}"] = [r[f"test_{kind}"] for r in last["replicas"]]
        out[f"replica_train_{kind}"] = [r[f"train_{kind}"] for r in last["replicas"]]
        out[f"ensemble_test_{kind}"] = last[f"ensemble_test_{kind}"]
        out[f"replica_mean_test_{kind}"] = replica_mean(last, kind)
    if config.algorithm.kind in UNCOUPLED_ALGORITHMS:
        out["center_note"] = UNTRAINED_CENTER
    return out


def metrics_rows(
    round_: int, gamma: float, rho: float, stats: dict[int, Any], distances: dict[int, float],
    failed: dict[int, str], lrs: list[float], seconds: tuple[float, float],
) -> list[dict[str, Any]]:  # fmt: skip
    """One metrics.parquet row per replica for round `round_` (counted from 1); the
    evaluation columns stay empty until annotate() fills them."""
    round_s, center_s = seconds
    rows = []
    for a, lr in enumerate(lrs):
        s = stats.get(a)
        rows.append({
            "round": round_, "replica": a, "train_loss": s.train_loss if s else None,
            "distance_to_center": distances.get(a), "gamma": gamma, "rho": rho, "lr": lr,
            "step_seconds": s.step_seconds if s else None,
            "coupling_seconds": s.coupling_seconds if s else None,
            "round_seconds": round_s, "center_seconds": center_s,
            "failure": failed.get(a),
            **{f"{where}test_{kind}": None for kind in EVAL_KINDS
               for where in ("", "center_", "ensemble_")},
        })  # fmt: skip
    return rows


def training_plot(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> bytes:
    from foundation.plots import training_curves  # matplotlib only where plots are drawn

    return training_curves(rows, evaluations)


LABELS = {"accuracy": "acc", "loss": "loss", "metric": "metric"}


def progress_line(p: dict[str, Any], rounds: int) -> str:
    """One round as the driver prints it (with the headline number at evaluations)."""
    line = (
        f"round {p['round']:>5}/{rounds}  γ {p['gamma']:.4g}  loss {p['mean_loss']:.4f}  "
        f"dist {p['mean_distance']:.4g}  {p['seconds'] * 1000:.0f} ms"
    )
    if "headline" in p:
        where, kind = p["headline"].split("_test_")
        line += f"  {where.replace('_', ' ')} test {LABELS[kind]} {p[p['headline']]:.4f}"
    if p.get("failed"):
        line += f"  replicas {p['failed']} failed and restarted from the center"
    if p.get("checkpoint"):
        line += "  · checkpoint"
    return line


def summary_table(s: dict[str, Any], run_dir: str) -> str:
    """The final table of the headline kind (accuracy, a metric, or the loss): center,
    ensemble and each replica, then the run's identity."""
    kind = s["headline"].rsplit("_", 1)[1]
    test, train = s[f"replica_test_{kind}"], s[f"replica_train_{kind}"]
    untrained = "center_note" in s
    center = "center (untrained: see below)" if untrained else "center"
    rows = [(center, s[f"center_test_{kind}"], s[f"center_train_{kind}"])]
    rows.append(("ensemble (outputs averaged)", s[f"ensemble_test_{kind}"], None))
    rows += [(f"replica {a}", te, tr) for a, (te, tr) in enumerate(zip(test, train, strict=True))]
    rows.append(("replica mean", sum(test) / len(test), None))
    label = LABELS[kind]
    lines = [f"{'model':<28} {'test ' + label:>9} {'train ' + label:>10}"]
    for name, te, tr in rows:
        lines.append(f"{name:<28} {te:>9.4f} {'' if tr is None else f'{tr:.4f}':>10}")
    lines.append(
        f"{s['algorithm']} · {s['replicas']} replicas · {s['rounds']} rounds · "
        f"{s['gradient_evaluations_per_replica']} gradient evaluations per replica · "
        f"{s['wall_seconds']:.1f} s"
    )
    if untrained:
        lines.append(f"note: {s['center_note']}")
    lines.append(f"center_sha256 {s['center_sha256']}")
    lines.append(f"run directory {run_dir}")
    return "\n".join(lines)
