"""A finished sweep's results: one row per trial, trials.parquet, the printed table,
best.toml (ready for jobs.train) and plots/sweep.png, all in the sweep directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foundation.config import to_toml
from foundation.storage import Storage
from jobs.sweep.plot import sweep_plot
from jobs.sweep.space import build_config, flat, raw
from jobs.sweep.sweepfile import Sweep, join
from jobs.sweep.trial import REPORTED

Row = dict[str, Any]


def plain(value: Any) -> Any:
    """numpy scalars (from Tune's samplers) as Python numbers, for Parquet and TOML."""
    return value.item() if hasattr(value, "item") else value


def trial_row(sweep: Sweep, result: Any) -> Row:
    """One trial: its (final) parameters and its last reported metrics."""
    m, config = result.metrics or {}, result.config or {}
    reached = m.get("round")
    status = "error" if result.error else "finished"
    if status == "finished" and (reached or 0) < sweep.base.train.rounds:
        status = "stopped early"
    row: Row = {"trial": m.get("trial_id") or Path(result.path).name}
    row |= {key: plain(sweep.space[key].clip(config.get(key))) for key in sweep.space}
    row |= {"status": status, "reports": m.get("training_iteration")}
    row |= {key: m.get(key) for key in REPORTED}
    row |= {k: v for k, v in m.items() if k.startswith(("center_test_", "ensemble_test_"))}
    row.setdefault(sweep.sweep.metric, None)
    row |= {key: m.get(key) for key in ("exploits", "restored_from", "restored_round")}
    row["restored_from"] = row["restored_from"] or None
    row["run_dir"] = join(sweep.base.run.storage, sweep.sweep.name, "runs", str(row["trial"]))
    return row


def trial_rows(sweep: Sweep, results: Any) -> list[Row]:
    """One row per trial of Tune's ResultGrid, in trial order."""
    rows = sorted((trial_row(sweep, result) for result in results), key=lambda r: r["trial"])
    for key in sweep.space:  # one Parquet type per column: text where the values mix
        if len({type(r[key]) for r in rows}) > 1:
            for r in rows:
                r[key] = raw(r[key])
    return rows


def best_row(sweep: Sweep, rows: list[Row]) -> Row | None:
    metric = sweep.sweep.metric
    scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if sweep.sweep.direction == "max" else -1
    return max(scored, key=lambda r: sign * r[metric])


def best_toml(sweep: Sweep, row: Row) -> str:
    """The best trial's config, ready for jobs.train (a new run name, the base storage)."""
    values = {**flat(sweep.base), **{k: row[k] for k in sweep.space}}
    values["run.name"] = f"{sweep.sweep.name}-best"
    values["data.validation"] = 0.0  # the validation split chose it; the run reports the test
    config = build_config(values)
    metric = sweep.sweep.metric
    header = [
        f"# Best trial of sweep {sweep.sweep.name!r} ({sweep.source}): {row['trial']},",
        f"# {metric} = {row[metric]:.4f} at round {row['round']}; its run: {row['run_dir']}",
    ]
    if sweep.base.data.validation:
        header.append(
            f"# Chosen on the held-out {sweep.base.data.validation:g} of the training set "
            "(data.validation); this run trains on all of it and reports the test set."
        )
    if sweep.sweep.scheduler == "pbt":
        header.append("# PBT changed its η / γ0 during the run: these are its final values.")
    header.append("# python -m jobs.train --config <this file>")
    return "\n".join(header) + "\n" + to_toml(config)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_text(sweep: Sweep, rows: list[Row]) -> str:
    metric = sweep.sweep.metric
    keys = [*sweep.space, "status", "round", metric, "mean_loss", "mean_distance"]
    shown = metric.removeprefix("center_test_").replace("accuracy", "acc")
    head = f"center {'val ' if sweep.base.data.validation else ''}{shown}"
    heads = {metric: head, "mean_loss": "loss", "mean_distance": "dist"}
    table = [["trial", *(heads.get(k, k) for k in keys)]]
    table += [[str(r["trial"]), *(_cell(r.get(k)) for k in keys)] for r in rows]
    if any(r.get("restored_from") for r in rows):  # a column only where PBT moved a run
        table[0].append("restored from")
        for line, r in zip(table[1:], rows, strict=True):
            line.append(_cell(r.get("restored_from")))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)  # fmt: skip


def write_outputs(sweep: Sweep, rows: list[Row]) -> Row | None:
    """trials.parquet, plots/sweep.png and (when a trial scored) best.toml; the best row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = Storage(sweep.uri)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    store.write_bytes("trials.parquet", sink.getvalue().to_pybytes())
    store.mkdir("plots")
    store.write_bytes("plots/sweep.png", sweep_plot(sweep, rows))
    best = best_row(sweep, rows)
    if best is not None:
        store.write_bytes("best.toml", best_toml(sweep, best).encode())
    return best
