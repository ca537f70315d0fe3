"""The report's files besides its text: two PNG plots and the Parquet tables.

matplotlib and pyarrow are imported when used, so that the table tests (and a Ray
worker importing this package) do not pay for them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from jobs.compare.headline import Headline, headline_of_rows
from jobs.compare.methods import BASELINES, LABELS, METHODS
from jobs.compare.protocol import Protocol
from jobs.compare.stats import Aggregate, aggregate


def _headline_axes(
    ax: Any, agg: Aggregate, rows: list[dict[str, Any]], model: str, h: Headline
) -> None:
    """Bars of the mean ± std test headline (accuracy, loss, metric) per method, with
    every seed as a dot."""
    methods = [m for m in METHODS if (model, m) in agg]
    means = [agg[(model, m)][h.test][0] for m in methods]
    stds = [np.nan_to_num(agg[(model, m)][h.test][1]) for m in methods]
    ax.bar(range(len(methods)), means, yerr=stds, capsize=4,
           color=["#999" if m in BASELINES else "#3a7" for m in methods])  # fmt: skip
    for seed_row in (r for r in rows if r["model"] == model):
        ax.plot(methods.index(seed_row["method"]), seed_row[h.test], "k.", ms=3)
    ax.set_xticks(range(len(methods)), [LABELS[m] for m in methods], rotation=30, ha="right")
    if h.kind == "accuracy":  # a fraction: zoom in on the bars' tops, inside [0, 1]
        lo = min(r[h.test] for r in rows if r["model"] == model)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(means) + 0.05))
    ax.set_ylabel(f"test {h.kind}, {h.direction} (mean ± std, dots = seeds)")


def _energy_axes(ax: Any, rows: list[dict[str, Any]], model: str) -> None:
    """Mean ± std δE(σ) curves over seeds, one per method that has one."""
    for method in METHODS:
        mine = [r for r in rows if (r["model"], r["method"]) == (model, method) and r["dE_curve"]]
        if not mine:
            continue
        curves = np.array([r["dE_curve"] for r in mine])
        mean = curves.mean(0)
        std = curves.std(0, ddof=1) if len(mine) > 1 else np.zeros_like(mean)
        ax.errorbar(mine[0]["sigmas"], mean, yerr=std, label=LABELS[method], capsize=2,
                    linestyle="--" if method in BASELINES else "-")  # fmt: skip
    ax.set_xlabel("σ (multiplicative noise)")
    ax.set_ylabel("δE: train loss increase")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)


def headline_png(rows: list[dict[str, Any]]) -> str:
    """The file name of the headline plot: accuracy.png, loss.png or metric.png."""
    return f"{headline_of_rows(rows).kind}.png"


def plots(p: Protocol, rows: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    """(headline_png, local_energy.png): one panel per model that has rows."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node or in CI
    import matplotlib.pyplot as plt

    agg, h = aggregate(rows), headline_of_rows(rows)
    models = [m for m in p.models if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        _headline_axes(ax, agg, rows, model, h)
        ax.set_title(f"{p.dataset} {model}")
    fig.tight_layout()
    acc = _png(fig, plt)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        _energy_axes(ax, rows, model)
        ax.set_title(f"{p.dataset} {model}: local energy")
    fig.tight_layout()
    return acc, _png(fig, plt)


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
