"""Flatness of a trained model: local energy, Hessian spectrum, α-rescaling (no Ray).

Every measure here says in landscape.rescale.INVARIANCE whether it survives Dinh et
al.'s function-preserving rescaling (docs/algorithms.md, Sharp minima); report it
next to the number.
"""

from landscape.hessian import (
    HVP,
    Eigenvalues,
    SpectralDensity,
    TraceEstimate,
    closure_hvp,
    hessian_spectral_density,
    hessian_top_eigenvalues,
    hessian_trace,
    hutchinson_trace,
    make_hvp,
    spectral_density,
    top_eigenvalues,
)
from landscape.local_energy import (
    NOISES,
    LocalEnergy,
    Noise,
    has_labels,
    local_energy,
    sigma_grid,
)
from landscape.rescale import INVARIANCE, INVARIANCE_NOTES, find_pairs, rescale_

__all__ = [
    "HVP",
    "INVARIANCE",
    "INVARIANCE_NOTES",
    "NOISES",
    "Eigenvalues",
    "LocalEnergy",
    "Noise",
    "SpectralDensity",
    "TraceEstimate",
    "closure_hvp",
    "find_pairs",
    "has_labels",
    "hessian_spectral_density",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "hutchinson_trace",
    "local_energy",
    "make_hvp",
    "rescale_",
    "sigma_grid",
    "spectral_density",
    "top_eigenvalues",
]
