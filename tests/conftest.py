"""Shared fixtures: a config factory on small budgets and one data cache for the session."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from foundation.config import Config, load_config
from tests.support import ConfigFactory


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """One thread, as in the replica actors: the tiny models here run faster on one core
    of the 2-core CI box, and a second busy process cannot slow them fifty-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MNIST-1D Parquet cache for the whole session (generating it takes ~1 s)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def built_data_root(data_root: Path) -> Path:
    """data_root with MNIST-1D's Parquet cache built, for runs in other processes (a
    submitted job, a command line), which would otherwise each generate it again."""
    from foundation.data import load_dataset

    load_dataset("mnist1d", data_root)
    return data_root


@pytest.fixture
def make_config(tmp_path: Path, data_root: Path) -> ConfigFactory:
    """load_config with a small budget, this test's run storage and the shared data cache."""

    def factory(*overrides: str, name: str = "t") -> Config:
        base = [
            f"run.storage={tmp_path / 'runs'}",
            f"run.name={name}",
            f"data.root={data_root}",
            "algorithm.replicas=2",
            "algorithm.coupling_period=5",
            "train.rounds=4",
            "train.eval_every=2",
        ]
        return load_config(None, [*base, *overrides])

    return factory
