"""Dinh et al.'s check: rescale a model by α without changing its function, measure it
again with the same seeds, and see which measures moved beyond their Monte-Carlo error
(landscape.INVARIANCE says which should)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from foundation.data import Dataset
from foundation.parts import Parts
from jobs.flatness.measuring import Measured, ProgressFn, measure
from jobs.flatness.rows import energy_at
from jobs.flatness.settings import MEASURES, SPLITS, Settings
from landscape import INVARIANCE, Noise, find_pairs, rescale_

RESCALE_SUMMARY = {
    "local_energy_multiplicative": "train loss δE at the largest σ",
    "local_energy_additive": "train loss δE at the largest σ",
    "hessian_top_eigenvalue": "largest eigenvalue",
    "hessian_trace": "Hutchinson trace",
    "hessian_spectral_density": "largest SLQ node (the spectrum's right edge)",
}
"""What each measure's ratio after/before is of."""


def _invariance(invariant: bool) -> str:
    return "invariant" if invariant else "NOT invariant"


def expected_of(name: str) -> str:
    """What landscape.INVARIANCE says of a measure, in the words the report uses."""
    return _invariance(INVARIANCE[name])


def observed_of(entries: list[dict[str, Any]]) -> str:
    """A measure is observed NOT invariant if it moved for any model checked."""
    return _invariance(not any(e["changed_beyond_error"] for e in entries))


def _changed(before: float, se_before: float, after: float, se_after: float) -> bool:
    """Moved by more than 3 combined standard errors (plus float32 rounding)."""
    tolerance = 3 * math.hypot(se_before, se_after) + 1e-4 * max(abs(before), abs(after)) + 1e-9
    return abs(after - before) > tolerance


def _scalar(m: Measured, name: str, settings: Settings) -> tuple[float, float]:
    """The one number per measure whose ratio after/before is reported."""
    if name.startswith("local_energy_"):
        noise: Noise = "multiplicative" if name.endswith("multiplicative") else "additive"
        at = energy_at(m.energy[noise, "train"], settings.report_sigmas(noise)[1])
        return at["loss_delta"], at["loss_delta_stderr"]
    if name == "hessian_top_eigenvalue":
        return float(m.eigen.values[0]), float(m.eigen.residuals[0])
    if name == "hessian_trace":
        return m.trace.mean, m.trace.stderr
    return float(m.density.nodes.max()), 0.0  # the spectrum's right edge


def _points(m: Measured, name: str) -> list[tuple[float, float]]:
    """Every estimate a measure consists of, to test "changed" on all of them."""
    if name.startswith("local_energy_"):
        noise = name.removeprefix("local_energy_")
        points: list[tuple[float, float]] = []
        for split in SPLITS:
            e = m.energy[noise, split]
            points += list(zip(e.loss_delta.tolist(), e.loss_delta_se.tolist(), strict=True))
            if m.labels:  # without class labels the error fields are not measured
                points += list(zip(e.error_delta.tolist(), e.error_delta_se.tolist(), strict=True))
        return points
    if name == "hessian_top_eigenvalue":
        return list(zip(m.eigen.values.tolist(), m.eigen.residuals.tolist(), strict=True))
    if name == "hessian_trace":
        return [(m.trace.mean, m.trace.stderr)]
    return [(float(m.density.nodes.max()), 0.0), (float(m.density.nodes.min()), 0.0)]


def rescale_check(
    model: nn.Module,
    data: Dataset,
    before: Measured,
    parts: Parts,
    settings: Settings,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Rescale a copy by α, check it predicts the same, measure it again with the same
    seeds, and say per measure whether it moved beyond its Monte-Carlo error."""
    alpha = settings.rescale_alpha
    assert alpha is not None
    rescaled = copy.deepcopy(model)
    try:
        pairs = find_pairs(rescaled)
    except ValueError as err:
        return {"alpha": alpha, "skipped": f"cannot rescale this model: {err}"}
    rescale_(rescaled, alpha, pairs)
    diff, scale = _prediction_change(model, rescaled, data, settings.subset)
    if progress:
        progress(f"rescaled by α={alpha:g}: max |Δ logit| = {diff:.2e}; measuring again")
    after = measure(rescaled, data, parts, settings, progress)
    return {
        "alpha": alpha,
        "pairs": [list(p) for p in pairs],
        "max_abs_prediction_diff": diff,
        "max_abs_logit": scale,
        "predictions_unchanged": diff <= 1e-4 * max(scale, 1.0),
        "measures": {name: _compare(before, after, name, settings) for name in MEASURES},
    }


def _prediction_change(
    model: nn.Module, rescaled: nn.Module, data: Dataset, subset: int
) -> tuple[float, float]:
    """(max |Δ logit|, max |logit|) on the first `subset` test samples: the rescaling
    must not change the function, or the check would compare two different models."""
    device = next(model.parameters()).device
    x = data.test.x[:subset].to(device)
    with torch.no_grad():
        reference, outputs = model(x), rescaled(x)
    return float((outputs - reference).abs().max()), float(reference.abs().max())


def _compare(before: Measured, after: Measured, name: str, settings: Settings) -> dict[str, Any]:
    """One measure before and after: its ratio, and whether any estimate moved."""
    b, sb = _scalar(before, name, settings)
    a, sa = _scalar(after, name, settings)
    changed = any(
        _changed(pb, sbb, pa_, saa)
        # strict=False: Lanczos may return fewer than k values on one side
        for (pb, sbb), (pa_, saa) in zip(_points(before, name), _points(after, name), strict=False)
    )
    return {
        "what": RESCALE_SUMMARY[name],
        "before": b,
        "before_stderr": sb,
        "after": a,
        "after_stderr": sa,
        "ratio": a / b if b != 0 else None,
        "changed_beyond_error": changed,
        "observed": _invariance(not changed),
        "expected": expected_of(name),
    }
