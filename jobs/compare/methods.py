"""The table's rows: which methods, in which order, and how each row reads its model."""

from __future__ import annotations

METHODS: tuple[str, ...] = (
    "sgd", "sgd_long", "ensemble", "rsgd", "esgd", "parle", "easgd", "diloco", "localsgd",
)  # fmt: skip
"""Table rows, in order; sgd, sgd_long and ensemble are the budget-matched baselines."""
LABELS: dict[str, str] = {
    "sgd": "SGD",
    "sgd_long": "SGD, y× steps",
    "ensemble": "ensemble of y SGD",
    "rsgd": "rSGD center",
    "esgd": "eSGD",
    "parle": "Parle center",
    "easgd": "EASGD center",
    "diloco": "DiLoCo center",
    "localsgd": "local SGD center",
}
BASELINES: tuple[str, ...] = ("sgd", "sgd_long", "ensemble")
CONTENDERS: tuple[str, ...] = ("rsgd", "esgd", "parle", "easgd", "diloco", "localsgd")
TRAINED: tuple[str, ...] = (
    "sgd", "sgd_long", "rsgd", "esgd", "parle", "easgd", "diloco", "localsgd",
)  # fmt: skip
"""Methods that are one training run each (the ensemble reuses the sgd run)."""
SWEPT: tuple[str, ...] = ("sgd", "rsgd", "esgd", "parle", "easgd", "diloco", "localsgd")
"""Methods with their own hyperparameter sweep; sgd_long and the ensemble reuse sgd's."""
ENTROPY: tuple[str, ...] = ("esgd", "parle")
"""Methods whose budget counts the L inner steps of every outer step."""
REPLICA_ROWS: tuple[str, ...] = ("sgd", "sgd_long", "esgd")
"""Rows that report the mean single replica; every other trained row reports the center."""
MEASURES_FILE = "compare.json"
"""What a final run's task writes beside summary.json: its flatness and ensemble numbers."""
MAX_TRIALS = 6
"""Sweep trials per method and model at most: the whole protocol must fit in about an
hour on the 2-core box, and the final seeds are not what gets trimmed."""
