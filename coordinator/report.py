"""The run report: summary.json, the center's sha256, the training plot, and the lines a
person reads (one per round, and the final table).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foundation.config import ENTROPY_ALGORITHMS, Config


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


def summary(
    config: Config,
    rounds: int,
    last: dict[str, Any],
    final_rows: list[dict[str, Any]],
    center: Tensor,
    num_params: int,
) -> dict[str, Any]:
    """summary.json without its timing: the final evaluation `last`, the last round's rows."""
    distances = [r["distance_to_center"] for r in final_rows if r["distance_to_center"] is not None]
    return {
        "run": config.run.name,
        "algorithm": config.algorithm.kind,
        "replicas": len(last["replicas"]),
        "rounds": rounds,
        "gradient_evaluations_per_replica": gradient_evaluations(config, rounds),
        "center_test_accuracy": last["center"]["test_accuracy"],
        "center_test_loss": last["center"]["test_loss"],
        "center_train_accuracy": last["center"]["train_accuracy"],
        "replica_test_accuracy": [r["test_accuracy"] for r in last["replicas"]],
        "replica_train_accuracy": [r["train_accuracy"] for r in last["replicas"]],
        "ensemble_test_accuracy": last["ensemble_test_accuracy"],
        "mean_distance_to_center": float(np.mean(distances)) if distances else None,
        "final_gamma": final_rows[0]["gamma"],
        "center_sha256": center_sha256(center, num_params),
    }


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
            "failure": failed.get(a), "test_accuracy": None,
            "center_test_accuracy": None, "ensemble_test_accuracy": None,
        })  # fmt: skip
    return rows


def evaluation(round_: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation record from the replicas' reports (the first also reports the
    center): the ensemble averages the replicas' output probabilities."""
    probs = np.mean([res.pop("test_probs") for res in results], axis=0)
    labels = results[0].pop("test_labels")
    center = results[0].pop("center")
    center.pop("test_probs")
    return {
        "round": round_,
        "center": center,
        "replicas": results,
        "ensemble_test_accuracy": float((probs.argmax(1) == labels).mean()),
    }


def annotate(rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Put an evaluation's numbers into the metrics rows of the round it followed."""
    for row in rows:
        row["test_accuracy"] = record["replicas"][row["replica"]]["test_accuracy"]
        row["center_test_accuracy"] = record["center"]["test_accuracy"]
        row["ensemble_test_accuracy"] = record["ensemble_test_accuracy"]


def training_plot(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> bytes:
    from foundation.plots import training_curves  # matplotlib only where plots are drawn

    return training_curves(rows, evaluations)


def progress_line(p: dict[str, Any], rounds: int) -> str:
    """One round as the driver prints it."""
    line = (
        f"round {p['round']:>5}/{rounds}  γ {p['gamma']:.4g}  loss {p['mean_loss']:.4f}  "
        f"dist {p['mean_distance']:.4g}  {p['seconds'] * 1000:.0f} ms"
    )
    if "center_test_accuracy" in p:
        line += f"  center test acc {p['center_test_accuracy']:.4f}"
    if p.get("failed"):
        line += f"  replicas {p['failed']} failed and restarted from the center"
    if p.get("checkpoint"):
        line += "  · checkpoint"
    return line


def summary_table(s: dict[str, Any], run_dir: str) -> str:
    """The final table: center, ensemble and each replica, then the run's identity."""
    rows = [("center", s["center_test_accuracy"], s["center_train_accuracy"])]
    rows.append(("ensemble (outputs averaged)", s["ensemble_test_accuracy"], None))
    for a, (test, train) in enumerate(
        zip(s["replica_test_accuracy"], s["replica_train_accuracy"], strict=True)
    ):
        rows.append((f"replica {a}", test, train))
    mean = sum(s["replica_test_accuracy"]) / len(s["replica_test_accuracy"])
    rows.append(("replica mean", mean, None))
    lines = [f"{'model':<28} {'test acc':>9} {'train acc':>10}"]
    for name, test, train in rows:
        lines.append(f"{name:<28} {test:>9.4f} {'' if train is None else f'{train:.4f}':>10}")
    lines.append(
        f"{s['algorithm']} · {s['replicas']} replicas · {s['rounds']} rounds · "
        f"{s['gradient_evaluations_per_replica']} gradient evaluations per replica · "
        f"{s['wall_seconds']:.1f} s"
    )
    lines.append(f"center_sha256 {s['center_sha256']}")
    lines.append(f"run directory {run_dir}")
    return "\n".join(lines)
