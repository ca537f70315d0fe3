"""RESULTS.md's per-model pieces: the table, the verdicts and the flatness correlations.

Each function returns Markdown lines for one model from the aggregate (stats.py), so the
wording can be tested on hand-made numbers without any run. `h` is the comparison's
headline (headline.py): the test accuracy, or the test loss of runs without a metric
(lower is better), or a user's metric; every column, verdict and reading says which.
"""

from __future__ import annotations

import math

from jobs.compare.headline import ACCURACY, Headline
from jobs.compare.methods import BASELINES, CONTENDERS, LABELS, METHODS
from jobs.compare.stats import Aggregate, Cell, spearman, spearman_critical, verdict


def fmt(cell: Cell, digits: int = 3) -> str:
    mean, std, n = cell
    if n == 0:
        return "—"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_sci(cell: Cell) -> str:
    """For flatness numbers, which span orders of magnitude across methods."""
    mean, std, n = cell
    if n == 0:
        return "—"
    return f"{mean:.3g}" if not math.isfinite(std) else f"{mean:.3g} ± {std:.2g}"


def table_lines(
    agg: Aggregate, model: str, sigmas: tuple[float, float], h: Headline = ACCURACY
) -> list[str]:
    head = (
        f"| method | test {h.short} | train {h.short} | gap ({h.gap_words}) | "
        f"δE(σ={sigmas[0]:g}) | δE(σ={sigmas[1]:g}) | λ_max | wall s | seeds |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        cells = agg.get((model, method))
        if cells is None:
            continue
        lines.append(
            f"| {LABELS[method]} | {fmt(cells[h.test])} | {fmt(cells[h.train])}"
            f" | {fmt(cells['gap'])} | {fmt_sci(cells['dE_0'])} | {fmt_sci(cells['dE_1'])}"
            f" | {fmt_sci(cells['lambda_max'])} | {fmt(cells['wall_seconds'], 1)}"
            f" | {cells[h.test][2]} |"
        )
    return lines


def _against(agg: Aggregate, model: str, a: Cell, baseline: str, h: Headline) -> str:
    b = agg[(model, baseline)][h.test]
    word = verdict(a, b, h)
    return f"{word} {LABELS[baseline]} ({fmt(a)} vs {fmt(b)}, Δ = {a[0] - b[0]:+.3f})"


def verdict_lines(agg: Aggregate, model: str, h: Headline = ACCURACY) -> list[str]:
    """One line per coupled method: its test headline number against each baseline."""
    lines = []
    for c in CONTENDERS:
        if (model, c) not in agg:
            continue
        a = agg[(model, c)][h.test]
        parts = [_against(agg, model, a, b, h) for b in BASELINES if (model, b) in agg]
        lines.append(f"- **{LABELS[c]}**: " + "; ".join(parts) + ".")
    return lines


def _reading(rho: float, crit: float, h: Headline) -> str:
    """Whether flatter (smaller δE or λ_max) went with better: ρ < 0 with a higher-is-
    better number (accuracy), ρ > 0 with a lower-is-better one (the loss)."""
    better = -rho if h.higher_is_better else rho  # > 0: flatter went with better
    if better >= crit:
        return f"flatter (smaller) went with better test {h.kind}"
    if better <= -crit:
        return f"flatter went with WORSE test {h.kind}"
    return f"no clear relation: |ρ| < {crit:.3g}, not significant at 5 %"


def flatness_lines(
    agg: Aggregate, model: str, sigmas: tuple[float, float], h: Headline = ACCURACY
) -> list[str]:
    """Spearman's ρ across methods of each flatness measure with the test headline."""
    methods = [m for m in METHODS if m != "ensemble" and (model, m) in agg]
    acc = [agg[(model, m)][h.test][0] for m in methods]
    out = []
    for col, what in (("dE_1", f"δE(σ={sigmas[1]:g})"), ("dE_0", f"δE(σ={sigmas[0]:g})"),
                      ("lambda_max", "λ_max")):  # fmt: skip
        rho = spearman([agg[(model, m)][col][0] for m in methods], acc)
        if not math.isfinite(rho):
            out.append(f"- {what}: not enough methods with a finite value to rank.")
            continue
        reading = _reading(rho, spearman_critical(len(methods)), h)
        out.append(
            f"- {what} vs test {h.kind} across the {len(methods)} single-model methods: "
            f"Spearman ρ = {rho:+.2f} ({reading})."
        )
    return out
