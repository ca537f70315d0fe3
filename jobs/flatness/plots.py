"""The flatness report's two plots, drawn from flatness.parquet's tidy rows alone.

local_energy_png: δE(σ) for every model, multiplicative and additive noise side by side,
train on top and test below, with Monte-Carlo error bars.
hessian_png: every model's Hessian spectral density on a log y axis, its top
eigenvalues marked.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Row = dict[str, Any]

NOISE_AXES = {
    "multiplicative": (
        "multiplicative noise  w' = w ⊙ (1 + σz)\ninvariant to α-rescaling of ReLU layers",
        "σ (relative to each weight; dimensionless)",
    ),
    "additive": (
        "additive noise  w' = w + σz\nNOT invariant to α-rescaling",
        "σ (absolute, in weight units)",
    ),
}


def _models(rows: Iterable[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row["model"], None)
    return list(seen)


def _style(model: str, models: list[str]) -> dict[str, Any]:
    """Center black and thick, its replicas blue; the baseline red (center) and orange."""
    baseline = model.startswith("baseline ")
    if model.endswith("center"):
        return {"color": "tab:red" if baseline else "black", "lw": 2.2, "ls": "-", "zorder": 3}
    mine = [m for m in models if m.startswith("baseline ") == baseline and not m.endswith("center")]
    shade = mine.index(model) / max(len(mine) - 1, 1)
    cmap = plt.get_cmap("Oranges" if baseline else "Blues")
    return {
        "color": cmap(0.45 + 0.4 * shade),
        "lw": 1.2,
        "ls": "--" if baseline else "-",
        "zorder": 2,
    }


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def local_energy_png(rows: list[Row], samples: int, loss: str = "cross-entropy, in nats") -> bytes:
    """2×2 panels: columns multiplicative / additive, rows train / test; loss δE vs σ
    (`loss` names the run's loss, settings.loss_words)."""
    models = _models(rows)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), squeeze=False)
    for col, noise in enumerate(NOISE_AXES):
        title, xlabel = NOISE_AXES[noise]
        for r, split in enumerate(("train", "test")):
            ax: Axes = axes[r][col]
            for model in models:
                points = sorted(
                    (row["sigma"], row["value"], row["stderr"] or 0.0)
                    for row in rows
                    if row["model"] == model
                    and row["measure"] == f"local_energy_{noise}"
                    and row["quantity"] == "loss_delta"
                    and row["split"] == split
                )
                if not points:
                    continue
                sigma, mean, se = (np.array(v) for v in zip(*points, strict=True))
                style = _style(model, models)
                ax.errorbar(
                    sigma, mean, yerr=se, label=model, capsize=2, marker="o", markersize=3, **style
                )
            ax.set_title(f"{title}  ({split})", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"δE = ⟨L(w')⟩ − L(w), {split} loss\n({loss})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"Local energy: mean rise of the loss under weight noise (M = {samples} draws per σ, "
        "error bars ± 1 standard error); lower = flatter",
        fontsize=10,
    )
    fig.tight_layout()
    return _png(fig)


def hessian_png(rows: list[Row], subset: str, loss: str = "cross-entropy, in nats") -> bytes:
    """Spectral densities on one common grid and broadening, log y; top-k marked."""
    models = _models(rows)
    nodes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tops: dict[str, list[float]] = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        pairs = [(r["x"], r["value"]) for r in mine if r["quantity"] == "node_weight"]
        if pairs:
            x, w = (np.array(v, dtype=np.float64) for v in zip(*pairs, strict=True))
            nodes[model] = (x, w)
        tops[model] = [r["value"] for r in mine if r["quantity"] == "eigenvalue"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    if nodes:
        every = np.concatenate([x for x, _ in nodes.values()])
        spread = float(every.max() - every.min()) or 1.0
        s = 0.01 * spread  # one broadening for all, so the curves are comparable
        grid = np.linspace(every.min() - 5 * s, every.max() + 5 * s, 2000)
        floor = math.inf
        for model, (x, w) in nodes.items():
            kernel = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / s) ** 2)
            density = kernel @ w / (s * math.sqrt(2 * math.pi))
            style = _style(model, models)
            ax.plot(grid, np.maximum(density, 1e-12), label=model, **style)
            floor = min(floor, float(density.max()) * 1e-7)
            for value in tops.get(model, []):
                ax.axvline(value, color=style["color"], ls=":", lw=0.9, alpha=0.8)
                ax.plot(
                    [value],
                    [1.0],
                    marker="v",
                    color=style["color"],
                    ms=7,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(floor, 1e-12))
        ax.text(
            0.01,
            0.02,
            f"Gaussian broadening s = {s:.3g} (1% of the spread of all nodes)",
            transform=ax.transAxes,
            fontsize=8,
        )
    ax.set_xlabel(f"Hessian eigenvalue λ of the mean training loss ({loss}), per weight²")
    ax.set_ylabel("spectral density φ(λ) (fraction of eigenvalues per unit λ, log scale)")
    ax.set_title(
        f"Hessian spectrum by stochastic Lanczos quadrature on {subset}\n"
        "▼ and dotted lines: top eigenvalues by Lanczos (NOT invariant to α-rescaling)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return _png(fig)
