"""RESULTS.md's plain reading and tuning sections, and the machine-readable choice.

Who won, in words, per model (including where a coupled method did not beat the
ensemble of y SGD runs, which costs the same training compute); the grid each method was
tuned on and what the sweep chose; and `chosen.json`, the same choice as overrides of
each method's base config, for updating the shipped configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobs.compare.headline import Headline, headline_of_rows
from jobs.compare.methods import CONTENDERS, LABELS, METHODS, SWEPT
from jobs.compare.plan import Choice, base_config
from jobs.compare.protocol import Protocol, hp_label
from jobs.compare.rows import relative
from jobs.compare.stats import Aggregate, verdict
from jobs.compare.tables import fmt


def _names(methods: Sequence[str]) -> str:
    return ", ".join(LABELS[m] for m in methods)


def reading_lines(agg: Aggregate, model: str, h: Headline) -> list[str]:
    """Who won on this model, in plain words, by the same verdicts as the table below."""
    present = [m for m in METHODS if (model, m) in agg]
    if not present:
        return []
    cell = {m: agg[(model, m)][h.test] for m in present}
    best = max(present, key=lambda m: cell[m][0] if h.higher_is_better else -cell[m][0])
    tied = [m for m in present if m != best and verdict(cell[m], cell[best], h) != "lost"]
    lines = [
        f"- Best mean test {h.kind}: **{LABELS[best]}** ({fmt(cell[best])})"
        + (f"; no clear difference from it: {_names(tied)}." if tied else
           "; every other method is clearly behind it.")
    ]  # fmt: skip
    for baseline, why in (
        ("ensemble", "y independent SGD runs whose outputs are averaged: the same training "
                     "compute, y models at inference"),
        ("sgd", "one SGD replica of the same steps"),
    ):  # fmt: skip
        if (model, baseline) not in agg:
            continue
        words: dict[str, list[str]] = {"beat": [], "no clear difference": [], "lost": []}
        for m in CONTENDERS:
            if (model, m) in agg:
                words[verdict(cell[m], cell[baseline], h)].append(m)
        parts = [f"beat it: {_names(words['beat']) or 'none'}"]
        if words["no clear difference"]:
            parts.append(f"no clear difference: {_names(words['no clear difference'])}")
        if words["lost"]:
            parts.append(f"**did not beat it** (lost): {_names(words['lost'])}")
        lines.append(f"- Against the {LABELS[baseline]} ({why}): " + "; ".join(parts) + ".")
    return lines


def _axes(trials: Sequence[Sequence[str]]) -> str:
    """The values each key took over the trials, e.g. `lr` ∈ {0.05, 0.1}; `K` …"""
    values: dict[str, list[str]] = {}
    for trial in trials:
        for item in trial:
            key, _, value = item.partition("=")
            seen = values.setdefault(key.rsplit(".", 1)[-1], [])
            if value not in seen:
                seen.append(value)
    return "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in values.items()) or "—"


def tuning_lines(
    p: Protocol, model: str, chosen: Choice, sweep_rows: Sequence[dict[str, Any]]
) -> list[str]:
    """Per method: its fixed settings, the grid it was tuned on, and what was chosen."""
    h = headline_of_rows(sweep_rows)
    scores = sweep_scores(sweep_rows, h)
    lines = [
        f"| method | fixed | tuned on (trials) | chosen | validation {h.short} |",
        "|---|---|---|---|---|",
    ]
    for method in SWEPT:
        if (model, method) not in chosen:
            continue
        trials = p.trials(model, method)
        fixed = ", ".join(f"`{o}`" for o in p.fixed.get(method, ())) or "—"
        hp = chosen[(model, method)]
        score = scores.get((model, method, " ".join(hp)))
        lines.append(
            f"| {LABELS[method]} | {fixed} | {_axes(trials)} ({len(trials)}) "
            f"| `{hp_label(hp)}` | {'—' if score is None else f'{score:.3f}'} |"
        )
    return lines


def chosen_json(
    p: Protocol, chosen: Choice, sweep_rows: Sequence[dict[str, Any]],
    rounds: dict[tuple[str, str], int],
) -> dict[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """model → method → what its final runs used on top of its base config: `overrides`
    (the fixed settings, then the chosen ones), its rounds at the budget and the
    validation number that chose it (besides these the runs set only the model, data,
    seed, budget and the protocol's `set`)."""
    h = headline_of_rows(sweep_rows)
    scores = sweep_scores(sweep_rows, h)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (model, method), hp in chosen.items():
        out.setdefault(model, {})[method] = {
            "config": relative(base_config(p, method)),
            "overrides": [*p.fixed.get(method, ()), *hp],
            "fixed": list(p.fixed.get(method, ())),
            "chosen": list(hp),
            "rounds": rounds.get((model, method)),
            f"validation_{h.kind}": scores.get((model, method, " ".join(hp))),
        }
    return {m: out[m] for m in p.models if m in out}


def sweep_scores(
    sweep_rows: Sequence[dict[str, Any]], h: Headline
) -> dict[tuple[str, str, str], float]:
    """(model, method, the trial's overrides joined by spaces, as the rows hold them) →
    the trial's validation headline number."""
    return {(r["model"], r["method"], r["hyperparameters"]): float(r[h.test]) for r in sweep_rows}
