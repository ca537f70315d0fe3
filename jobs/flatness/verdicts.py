"""Which is flatter: the center against each group of models it is compared with, per
scalar measure, with a claim only where the gap exceeds 2 standard errors."""

from __future__ import annotations

from typing import Any

from jobs.flatness.rows import Result
from jobs.flatness.settings import SHORT, Settings, shown
from landscape import INVARIANCE, NOISES, Noise


def _reference(results: list[Result], baseline_algorithm: str | None) -> list[list[str]]:
    """[label, model name, …] for each group of models the center is compared with."""
    names = {r["name"]: r for r in results}
    groups: list[list[str]] = []
    own = [n for n, r in names.items() if r["group"] == "run" and r["role"] == "replica"]
    if own:
        groups.append(["this run's replicas", *own])
    if baseline_algorithm is not None:
        reps = [n for n, r in names.items() if r["group"] == "baseline" and r["role"] == "replica"]
        if baseline_algorithm == "sgd" and reps:
            # An sgd run's "center" averages independently trained nets: not a trained model.
            groups.append(["the baseline's replicas (independent SGD runs)", *reps])
        elif "baseline center" in names:
            groups.append(["the baseline's center", "baseline center"])
    return groups


def _value(summary: dict[str, Any], name: str, settings: Settings, at: int) -> tuple[float, float]:
    """(value, standard error) of one measure in a model's summary; `at` picks which of
    the two report σ for a local energy."""
    if name == "hessian_top_eigenvalue":
        return summary["top_eigenvalue"], summary["top_eigenvalue_residuals"][0]
    if name == "hessian_trace":
        return summary["trace"]["mean"], summary["trace"]["stderr"]
    noise: Noise = "multiplicative" if name.endswith("multiplicative") else "additive"
    sigma = settings.report_sigmas(noise)[at]
    point = summary["local_energy"][noise]["train"][f"{sigma:g}"]
    return point["loss_delta"], point["loss_delta_stderr"]


def verdicts(
    results: list[Result], settings: Settings, baseline_algorithm: str | None
) -> list[dict[str, Any]]:
    """Center vs each reference group, per scalar measure; a claim needs a gap of more
    than 2 standard errors to EVERY member of the group, else "no clear difference"."""
    by_name = {r["name"]: r["summary"] for r in results}
    if "center" not in by_name:
        return []
    out: list[dict[str, Any]] = []
    for label, *members in _reference(results, baseline_algorithm):
        for name, at, short in _checks(settings):
            c = _value(by_name["center"], name, settings, at)
            others = {m: _value(by_name[m], name, settings, at) for m in members}
            out.append(_verdict(name, short, label, c, others))
        out.append(_test_numbers(label, by_name, members))
    return out


def _checks(settings: Settings) -> list[tuple[str, int, str]]:
    """(measure, which report σ, short label) of every scalar compared."""
    checks = [("hessian_top_eigenvalue", 0, "λ_max"), ("hessian_trace", 0, "tr H")]
    for noise in NOISES:
        for at in (0, 1):
            sigma = settings.report_sigmas(noise)[at]
            label = f"δE{'×' if noise == 'multiplicative' else '+'}(σ={sigma:g})"
            checks.append((f"local_energy_{noise}", at, label))
    return checks


def _verdict(
    name: str,
    short: str,
    against: str,
    center: tuple[float, float],
    others: dict[str, tuple[float, float]],
) -> dict[str, Any]:
    c, sc = center
    lo = min(v - 2 * s for v, s in others.values())
    hi = max(v + 2 * s for v, s in others.values())
    if c + 2 * sc < lo:
        verdict = "center flatter"
    elif c - 2 * sc > hi:
        verdict = "center sharper"
    else:
        verdict = "no clear difference"
    values = ", ".join(f"{v:.4g} ± {s:.2g}" for v, s in others.values())
    caveat = (
        "invariant to the α-rescaling of ReLU layers"
        if INVARIANCE[name]
        else "NOT invariant: a function-preserving rescaling can move it at will"
    )
    return {
        "measure": name,
        "label": short,
        "against": against,
        "verdict": verdict,
        "center": [c, sc],
        "others": {m: list(v) for m, v in others.items()},
        "invariant": INVARIANCE[name],
        "text": f"{short:<16} center {c:.4g} ± {sc:.2g} vs {values} → {verdict} ({caveat})",
    }


def _test_numbers(against: str, by_name: dict[str, Any], members: list[str]) -> dict[str, Any]:
    """The test number the run is judged by (accuracy, a user's metric, or the loss when
    it has no metric) beside the verdicts, with no verdict of its own: it is not a
    flatness measure, only what flatness is hoped to predict."""
    key = by_name["center"]["headline"]  # test_accuracy, test_metric or test_loss
    kind = key.removeprefix("test_")
    center = by_name["center"][key]
    others = ", ".join(shown(key, by_name[m][key]) for m in members)
    return {
        "measure": kind,
        "label": SHORT[key],
        "against": against,
        "verdict": None,
        "center": [center, None],
        "others": {m: [by_name[m][key], None] for m in members},
        "invariant": None,
        "text": f"{'test ' + kind:<16} center {shown(key, center)} vs {others}",
    }
