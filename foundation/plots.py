"""Plots a person reads after a run: losses, distances to the center, accuracies."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt


def training_curves(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> bytes:
    """Three panels: train loss and ‖w^a − w̄‖ per replica by round; test accuracies."""
    fig, (ax_loss, ax_dist, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.2))
    replicas = sorted({row["replica"] for row in rows})
    for a in replicas:
        mine = [row for row in rows if row["replica"] == a]
        rounds = [row["round"] for row in mine]
        # A round a replica lost has no loss or distance: a gap in its line, not a zero.
        for ax, key in ((ax_loss, "train_loss"), (ax_dist, "distance_to_center")):
            values = [math.nan if row[key] is None else row[key] for row in mine]
            ax.plot(rounds, values, label=f"replica {a}", lw=1)
    ax_loss.set(title="Training loss (mean over the round)", xlabel="round", ylabel="loss")
    ax_dist.set(title="Distance to the center ‖w − w̄‖", xlabel="round", ylabel="L2 distance")
    ax_dist.set_yscale("symlog", linthresh=1e-3)
    kind = _evaluated_kind(evaluations)
    if evaluations:
        at = [e["round"] for e in evaluations]
        ax_acc.plot(at, [e["center"][f"test_{kind}"] for e in evaluations], "o-", label="center")
        ensemble = [e[f"ensemble_test_{kind}"] for e in evaluations]
        ax_acc.plot(at, ensemble, "s--", label="ensemble")
        mean_replica = [
            sum(r[f"test_{kind}"] for r in e["replicas"]) / len(e["replicas"]) for e in evaluations
        ]
        ax_acc.plot(at, mean_replica, "^:", label="mean replica")
    title = {"accuracy": "Test accuracy", "metric": "Test metric", "loss": "Test loss"}[kind]
    ax_acc.set(title=title, xlabel="round", ylabel=f"{title.lower()[5:]}")
    for ax in (ax_loss, ax_dist, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def _evaluated_kind(evaluations: list[dict[str, Any]]) -> str:
    """What the evaluations measured beside the loss: accuracy, a user metric, or only
    the loss (the third panel shows that)."""
    center = evaluations[0]["center"] if evaluations else {}
    return next((k for k in ("accuracy", "metric") if f"test_{k}" in center), "loss")
