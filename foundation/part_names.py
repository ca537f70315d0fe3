"""The names of the built-in parts a config may choose, apart from the parts themselves.

foundation/config.py checks data.dataset, model.arch, train.loss and train.metric
against these when it loads a config. Keeping them here, with no torch import, lets a
command read and check its config before torch is imported (most of the 2.3 s that
`python benchmarks/p5_startup.py --phases` times for importing the job):
`python -m jobs.train` starts Ray in the meantime (jobs/train.py). The modules that
build the parts take their names from here; tests/unit/test_config.py checks that both
agree.
"""

from __future__ import annotations

DATASETS: tuple[str, ...] = ("mnist1d", "mnist", "fashion_mnist", "cifar10")
ARCHS: tuple[str, ...] = ("mlp", "cnn1d", "smallconvnet", "resnet18")
LOSS_NAMES: tuple[str, ...] = ("cross_entropy", "mse")
METRIC_NAMES: tuple[str, ...] = ("auto", "none", "accuracy")


def is_import_path(name: str) -> bool:
    """A part named as user code, `package.module:attribute`, not a built-in's name."""
    return ":" in name
