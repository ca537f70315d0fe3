"""plots/sweep.png: the sweep's metric against γ0 and η, one colour per scoping schedule."""

from __future__ import annotations

import io
import math
from typing import Any

from coordinator.rundir import RunDir
from foundation.config import parse_value
from jobs.sweep.sweepfile import Sweep


def gamma0_of(sweep: Sweep, row: dict[str, Any]) -> float:
    """γ0 of a trial: its value, or (for "auto") what its first round measured."""
    value = row.get("scoping.gamma0", sweep.base.scoping.gamma0)
    if isinstance(value, str) and value != "auto":
        value = parse_value(value)  # a column of mixed values is text
    if isinstance(value, (int, float)):
        return float(value)
    try:
        rows = RunDir(*row["run_dir"].rsplit("/", 1)).read_table("metrics.parquet")
    except OSError:
        return math.nan
    first = [r["gamma"] for r in rows if r["round"] == 1]
    return float(first[0]) if first else math.nan


def _scatter(sweep: Sweep, axes: Any, rows: list[dict[str, Any]], kind: str, color: str) -> None:
    """One scoping schedule's trials: o when finished, x when stopped early or failed."""
    metric, base = sweep.sweep.metric, sweep.base
    etas = [float(r.get("algorithm.lr", base.algorithm.lr)) for r in rows]
    for ax, xs in ((axes[0], [gamma0_of(sweep, r) for r in rows]), (axes[1], etas)):
        ended = [r["status"] == "finished" for r in rows]
        for done, marker in ((True, "o"), (False, "x")):
            pts = [(x, r[metric]) for x, r, e in zip(xs, rows, ended, strict=True) if e == done]
            if pts:
                label = kind + ("" if done else " (stopped early or failed)")
                ax.scatter(*zip(*pts, strict=True), marker=marker, c=color, label=label, s=40)


def sweep_plot(sweep: Sweep, rows: list[dict[str, Any]]) -> bytes:
    """The metric against γ0 (left) and η (right), one colour per scoping schedule."""
    from foundation.plots import plt  # matplotlib with the Agg backend

    metric, base = sweep.sweep.metric, sweep.base
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))

    def kind_of(row: dict[str, Any]) -> str:
        return str(row.get("scoping.kind", base.scoping.kind))

    for i, kind in enumerate(sorted({kind_of(r) for r in rows})):
        mine = [r for r in rows if kind_of(r) == kind and isinstance(r.get(metric), (int, float))]
        _scatter(sweep, axes, mine, kind, f"C{i}")
    what = f"{metric} (validation split)" if base.data.validation else metric
    axes[0].set(xlabel="γ0 (scoping.gamma0)", ylabel=what, title=f"{metric} by γ0 and schedule")
    axes[1].set(xlabel="η (algorithm.lr, final value)", ylabel=what, title=f"{metric} by η")
    for ax in axes:
        xs = [p[0] for c in ax.collections for p in c.get_offsets()]
        if xs and min(xs) > 0:  # γ0 and η span decades
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.collections:
            ax.legend(fontsize=8, title="scoping.kind", title_fontsize=8)
    fig.suptitle(f"sweep {sweep.sweep.name}: {len(rows)} trials, {sweep.sweep.scheduler}")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
