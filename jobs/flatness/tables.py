"""What the report prints: the table of every model, which is flatter, and the rescaling
check, as text (flatness.json holds the same numbers)."""

from __future__ import annotations

from typing import Any

from jobs.flatness.rescaling import RESCALE_SUMMARY, expected_of, observed_of
from jobs.flatness.rows import Result
from jobs.flatness.settings import LOWER_IS_FLATTER, MEASURES, SHORT, Settings, loss_words, shown

CAVEAT = (
    "  The ± of λ_max is its Lanczos residual bound, not a sampling error: λ_max is that of "
    "the Hessian of the stated subset, itself a sample of the training set.\n"
    "  Caveat (Dinh et al. 2017): for ReLU nets, α-rescaling makes λ_max, tr H, the spectrum "
    "and additive δE arbitrarily large without changing one prediction (other "
    "reparametrizations make them arbitrarily small too); only the multiplicative δE "
    "survives that rescaling. Flatter is not proof of better generalization."
)


def table(results: list[Result], settings: Settings) -> str:
    """One line per model: its test number (accuracy, a user's metric, or the loss when
    the run has no metric), λ_max, tr H and the multiplicative δE."""
    lo, hi = settings.report_sigmas("multiplicative")
    # The run and its baseline are judged by the same number (command.py checks).
    judged = results[0]["summary"]["headline"] if results else "test_accuracy"
    width = max(8, len(SHORT[judged]))
    header = (
        f"{'model':<22} {SHORT[judged]:>{width}} {'λ_max':>9} {'tr H ± se':>19} "
        f"{f'δE×(σ={lo:g}) ± se':>20} {f'δE×(σ={hi:g}) ± se':>20}"
    )
    lines = [header]
    for r in results:
        s = r["summary"]
        trace = f"{s['trace']['mean']:.4g} ± {s['trace']['stderr']:.2g}"
        cells = []
        for sigma in (lo, hi):
            p = s["local_energy"]["multiplicative"]["train"][f"{sigma:g}"]
            cells.append(f"{p['loss_delta']:.4g} ± {p['loss_delta_stderr']:.2g}")
        flag = "" if s["lanczos_converged"] else " (Lanczos not converged)"
        name = r["name"] + ("*" if _averaged_only(r) else "")
        lines.append(
            f"{name:<22} {shown(judged, s[judged]):>{width}} {s['top_eigenvalue']:>9.4g} "
            f"{trace:>19} {cells[0]:>20} {cells[1]:>20}{flag}"
        )
    n = results[0]["summary"]["subset"]["train"] if results else settings.subset
    if any(_averaged_only(r) for r in results):
        lines.append(
            "* the center of an sgd run: the average of independently trained replicas, not a "
            "trained model (compare with its replicas)"
        )
    loss = loss_words(results[0]["loss"] if results else "cross_entropy")
    lines.append(
        f"λ_max, tr H: Hessian of the mean training loss ({loss}) on the first {n} training "
        f"samples; δE×: multiplicative local energy, the rise of that loss on them, M = "
        f"{settings.samples}, seed {settings.seed}; {SHORT[judged]} on the whole test set."
    )
    return "\n".join(lines)


def _ratio(r: float) -> str:
    # Near 1, six decimals: "unchanged" must be seen to be unchanged, not rounded to it.
    return f"{r:.6f}" if abs(r - 1) < 1e-3 else f"{r:.4g}"


def _averaged_only(result: Result) -> bool:
    """An sgd run's center: an average of independent nets, never trained as one."""
    return bool(result["role"] == "center" and result["algorithm"] == "sgd")


def rescale_table(results: list[Result]) -> str:
    """One line per model (predictions), then one per measure: ratios, observed, expected."""
    lines = [_rescaled_line(r["name"], r["rescale"]) for r in results if "rescale" in r]
    checked = [r for r in results if "measures" in r.get("rescale", {})]
    if not checked:
        return "\n".join([*lines, "no model could be rescaled: nothing to compare"])
    lines.append("")
    ratio_head = f"ratio after/before ({len(checked)} models)"
    lines.append(f"{'measure':<28} {ratio_head:<30} {'observed':<14} landscape.INVARIANCE")
    for name in MEASURES:
        entries = [r["rescale"]["measures"][name] for r in checked]
        ratios = [e["ratio"] for e in entries if e["ratio"] is not None]
        low, high = (_ratio(min(ratios)), _ratio(max(ratios))) if ratios else ("n/a", "n/a")
        span = low if low == high else f"{low} … {high}"
        observed, expected = observed_of(entries), expected_of(name)
        mark = "matches" if observed == expected else "MISMATCH"
        lines.append(f"{name:<28} {span:<30} {observed:<14} {expected:<14} {mark}")
    lines.append(
        "observed NOT invariant = some estimate of the measure moved by more than 3 combined "
        "standard errors, with the same seeds before and after; ratios of: "
        + "; ".join(
            f"{n.removeprefix('local_energy_').removeprefix('hessian_')}: {w}"
            for n, w in RESCALE_SUMMARY.items()
        )
    )
    return "\n".join(lines)


def _rescaled_line(name: str, rc: dict[str, Any]) -> str:
    """Whether one model's predictions survived the rescaling (or why it was skipped)."""
    if "skipped" in rc:
        return f"{name}: {rc['skipped']}"
    state = "unchanged" if rc["predictions_unchanged"] else "CHANGED"
    return (
        f"{name}: α = {rc['alpha']:g} on layer pairs {rc['pairs']}: predictions "
        f"{state}, max |Δ logit| = {rc['max_abs_prediction_diff']:.2e} "
        f"(max |logit| {rc['max_abs_logit']:.3g})"
    )


def which_is_flatter(verdicts: list[dict[str, Any]]) -> str:
    """The verdicts, grouped by what the center is compared with, and the caveats."""
    lines = [f"Which is flatter? ({LOWER_IS_FLATTER}; a claim needs a gap > 2 standard errors)"]
    against = None
    for v in verdicts:
        if v["against"] != against:
            against = v["against"]
            lines.append(f"  center vs {against}:")
        lines.append(f"    {v['text']}")
    if not verdicts:
        lines.append(
            "  nothing to compare the center with (no replicas measured and no --baseline)"
        )
    lines.append(CAVEAT)
    return "\n".join(lines)
