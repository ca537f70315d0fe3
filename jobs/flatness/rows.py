"""One model's measures as plain data: flatness.parquet's tidy rows and a JSON summary."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from jobs.flatness.inputs import ModelSpec
from jobs.flatness.measuring import Measured
from jobs.flatness.settings import SPLITS, Settings
from landscape import INVARIANCE, NOISES, LocalEnergy

Row = dict[str, Any]
"""One row of flatness.parquet (see SCHEMA)."""
Result = dict[str, Any]
"""One model's measure_model result: plain data, so that a Ray task can return it."""

SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("group", pa.string()),
        ("role", pa.string()),
        ("measure", pa.string()),
        ("quantity", pa.string()),
        ("split", pa.string()),
        ("sigma", pa.float64()),
        ("index", pa.int64()),
        ("x", pa.float64()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("invariant", pa.bool_()),
    ]
)
"""flatness.parquet, one row per model × measure × quantity × split × σ (or index):

model      "center", "replica 0", …, "baseline center", "baseline replica 0", …
group      "run" or "baseline";  role: "center" or "replica"
measure    a key of landscape.INVARIANCE, or what the run is judged by on its test set (not
           a flatness measure): "accuracy", "metric" (a user's) or "loss" (no metric)
quantity   local energy: loss_delta, error_delta (per σ), base_loss, base_error (the
           error rows only where the targets are class labels);
           hessian_top_eigenvalue: eigenvalue (index = rank, 0 = largest);
           hessian_trace: trace; hessian_spectral_density: node_weight (x = the
           quadrature node, an eigenvalue location; value = its weight; index = node
           number) and broadening (value = the Gaussian's standard deviation);
           accuracy / metric / loss: the metric (if any) and the loss on the whole
           test set
split      "train" (the stated training subset) or "test"
sigma      σ of the local energy (relative for multiplicative, absolute for additive)
stderr     Monte-Carlo standard error; for an eigenvalue, the Lanczos residual bound
           (the true eigenvalue is within it); null where there is none
invariant  landscape.INVARIANCE[measure]; null for the test numbers
"""


def rows_of(spec: ModelSpec, m: Measured) -> list[Row]:
    """flatness.parquet's rows of one model, in a fixed order (test numbers, δE, Hessian)."""
    base = {"model": spec.name, "group": spec.group, "role": spec.role}
    rows = []
    if m.metric_name is not None and m.test_metric is not None:
        rows.append(_row(base, m.kind, m.metric_name, m.test_metric, split="test"))
    rows.append(_row(base, m.kind, "loss", m.test_loss, split="test"))
    for (noise, split), e in m.energy.items():
        rows += _energy_rows(base, f"local_energy_{noise}", split, e, m.labels)
    return rows + _hessian_rows(base, m)


def _row(base: Row, measure_: str, quantity: str, value: float, **extra: Any) -> Row:
    # Every column in every row, null where it does not apply: one schema for all rows.
    out = {
        **base,
        "measure": measure_,
        "quantity": quantity,
        "split": None,
        "sigma": None,
        "index": None,
        "x": None,
        "value": float(value),
        "stderr": None,
        "invariant": INVARIANCE.get(measure_),
    }
    out.update(extra)
    return out


def _energy_rows(base: Row, name: str, split: str, e: LocalEnergy, labels: bool) -> list[Row]:
    """Per σ the loss δE, and the error δE where there are class labels to err against."""
    rows = [_row(base, name, "base_loss", e.base_loss, split=split)]
    if labels:
        rows.append(_row(base, name, "base_error", e.base_error, split=split))
    quantities = [("loss_delta", e.loss_delta, e.loss_delta_se)]
    if labels:
        quantities.append(("error_delta", e.error_delta, e.error_delta_se))
    for s, sigma in enumerate(e.sigmas.tolist()):
        for quantity, mean, se in quantities:
            rows.append(
                _row(base, name, quantity, float(mean[s]), split=split, sigma=sigma,
                     stderr=float(se[s]))
            )  # fmt: skip
    return rows


def _hessian_rows(base: Row, m: Measured) -> list[Row]:
    eigen = zip(m.eigen.values.tolist(), m.eigen.residuals.tolist(), strict=True)
    rows = [
        _row(base, "hessian_top_eigenvalue", "eigenvalue", value, split="train", index=i,
             stderr=residual)
        for i, (value, residual) in enumerate(eigen)
    ]  # fmt: skip
    t, d = m.trace, m.density
    rows.append(_row(base, "hessian_trace", "trace", t.mean, split="train", stderr=t.stderr))
    for j, (node, weight) in enumerate(zip(d.nodes.tolist(), d.weights.tolist(), strict=True)):
        rows.append(
            _row(base, "hessian_spectral_density", "node_weight", weight, split="train",
                 index=j, x=node)
        )  # fmt: skip
    rows.append(_row(base, "hessian_spectral_density", "broadening", d.broadening, split="train"))
    return rows


def energy_at(e: LocalEnergy, sigma: float, labels: bool = True) -> dict[str, float]:
    """The δE point of the grid nearest to σ, with its standard errors (the error rate's
    only with class labels)."""
    s = int(torch.argmin((e.sigmas - sigma).abs()))
    point = {"loss_delta": float(e.loss_delta[s]), "loss_delta_stderr": float(e.loss_delta_se[s])}
    if labels:
        point |= {"error_delta": float(e.error_delta[s]),
                  "error_delta_stderr": float(e.error_delta_se[s])}  # fmt: skip
    return point


def summary_of(m: Measured, settings: Settings) -> dict[str, Any]:
    """One model's entry in flatness.json: the scalars the table and verdicts read."""
    energy: dict[str, Any] = {}
    for noise in NOISES:
        energy[noise] = {
            split: {
                f"{s:g}": energy_at(m.energy[noise, split], s, m.labels)
                for s in settings.report_sigmas(noise)
            }
            for split in SPLITS
        }
    base = m.energy["multiplicative", "train"]
    # The test numbers as summary.json names them: test_loss always, test_accuracy or
    # test_metric only when the run has that metric; `headline` is the one it is judged by.
    scores: dict[str, Any] = {
        "headline": f"test_{m.kind}",
        "headline_mode": "min" if m.metric_name is None else "max",
    }
    if m.metric_name is not None:
        scores[f"test_{m.metric_name}"] = m.test_metric
    scores |= {"test_loss": m.test_loss, "train_subset_loss": base.base_loss}
    if m.labels:
        scores["train_subset_error"] = base.base_error
    return {
        **scores,
        "top_eigenvalue": float(m.eigen.values[0]),
        "top_eigenvalues": m.eigen.values.tolist(),
        "top_eigenvalue_residuals": m.eigen.residuals.tolist(),
        "lanczos_steps": m.eigen.steps,
        "lanczos_converged": m.eigen.converged,
        "trace": {"mean": m.trace.mean, "stderr": m.trace.stderr, "samples": m.trace.num_samples},
        "spectral_density_largest_node": float(m.density.nodes.max()),
        "spectral_density_smallest_node": float(m.density.nodes.min()),
        "local_energy": energy,
        "subset": {"train": m.n_train, "test": m.n_test},
        "samples": settings.samples,
        "seed": settings.seed,
        "wall_seconds": dict(m.seconds),
    }
