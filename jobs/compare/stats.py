"""Statistics over seeds: mean ± sample std, verdicts, and Spearman's rank correlation.

Plain numbers in, plain numbers (or one word) out: the wording of the report is in
tables.py, so that these can be tested on hand-made values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jobs.compare.headline import ACCURACY, Headline, headline_of_rows
from jobs.compare.methods import METHODS

Cell = tuple[float, float, int]
"""(mean, sample std, n) of one column over seeds; std is nan with fewer than two."""
Aggregate = dict[tuple[str, str], dict[str, Cell]]
"""(model, method) → column → Cell, in table order."""

COMMON: tuple[str, ...] = ("gap", "dE_0", "dE_1", "lambda_max", "wall_seconds")


def columns(h: Headline = ACCURACY) -> tuple[str, ...]:
    """The aggregated columns: the headline's test and train numbers, then the rest."""
    return (h.test, h.train, *COMMON)


SPEARMAN_5PCT: dict[int, float] = {5: 1.0, 6: 0.886, 7: 0.786, 8: 0.738, 9: 0.700, 10: 0.648}
"""Two-sided 5 % critical values of Spearman's ρ for n pairs (exact tables)."""


def mean_std(values: Sequence[float]) -> Cell:
    """Mean and sample std (ddof = 1) of the finite values; nan where there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v)


def aggregate(rows: list[dict[str, Any]]) -> Aggregate:
    """(model, method) → column → (mean, std, n) over seeds; the test and train columns
    are those of the rows' headline (test_accuracy, test_loss, …)."""
    out: Aggregate = {}
    keys = sorted(
        {(r["model"], r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1]))
    )
    for key in keys:
        mine = [r for r in rows if (r["model"], r["method"]) == key]
        cols = columns(headline_of_rows(mine))
        out[key] = {c: mean_std([r[c] for r in mine]) for c in cols}
    return out


def verdict(a: Cell, b: Cell, h: Headline = ACCURACY) -> str:
    """a against b: "beat", "lost" or "no clear difference" (|Δ| below the seeds' spread);
    beating is being better by the headline (a higher accuracy, a lower loss).

    The spread is the larger of the two sample standard deviations; with fewer than two
    seeds on either side there is no spread to judge by, so no difference is clear.
    """
    (ma, sa, na), (mb, sb, nb) = a, b
    if na < 2 or nb < 2 or not all(math.isfinite(v) for v in (ma, mb, sa, sb)):
        return "no clear difference"
    if abs(ma - mb) <= max(sa, sb):
        return "no clear difference"
    return "beat" if h.better(ma, mb) else "lost"


def spearman_critical(n: int) -> float:
    """|ρ| needed for significance at 5 % (two-sided); 1 (never below) for n < 5."""
    if n < 5:
        return 1.0
    return SPEARMAN_5PCT.get(n, 1.96 / math.sqrt(n - 1))


def _ranks(v: Sequence[float]) -> np.ndarray:
    """Ranks from 0; ties share their average rank."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in set(v):
        idx = [i for i, w in enumerate(v) if w == value]
        r[idx] = r[idx].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan with < 3 pairs."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    rx, ry = _ranks([a for a, _ in pairs]), _ranks([b for _, b in pairs])
    if rx.std() == 0 or ry.std() == 0:  # one side all tied: no ranking to correlate
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
