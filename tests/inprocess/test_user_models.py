"""Tier 2: users' own models, data and losses through the Python API, in-process.

The two example projects (examples/gru_mnist1d: a GRU classifier on MNIST-1D read as a
sequence; examples/regression: an MLP regressor, its own data and its own MSE loss) train
with every algorithm, pack where they can (and fail clearly where they cannot), resume
exactly, and report their loss when they have no accuracy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import widevalley
from cluster.validate import check_parts
from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from foundation.config import UNCOUPLED_ALGORITHMS
from foundation.fields import ConfigError
from foundation.parts import Parts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALGORITHMS = {
    "sgd": ["algorithm.kind=sgd"],
    "rsgd": ["algorithm.kind=rsgd"],
    "esgd": ["algorithm.kind=esgd", "algorithm.inner_steps=2", "algorithm.lr=1.0"],
    "parle": ["algorithm.kind=parle", "algorithm.inner_steps=2", "algorithm.lr=0.5",
              "scoping.rho_max=1"],
    "easgd": ["algorithm.kind=easgd", "scoping.kind=constant", "scoping.gamma0=1",
              "scoping.gamma_max=1"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def example_projects() -> Iterator[None]:
    """The example projects on sys.path, as a user's working directory would be."""
    paths = [str(EXAMPLES / "gru_mnist1d"), str(EXAMPLES / "regression")]
    sys.path[:0] = paths
    yield
    for p in paths:
        sys.path.remove(p)


def small(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [f"run.storage={tmp_path}", f"run.name={name}", "algorithm.replicas=2",
            "algorithm.coupling_period=2", "train.rounds=2", "train.eval_every=2",
            *extra]  # fmt: skip


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_regression_project_trains_with_every_algorithm(algorithm: str, tmp_path: Path) -> None:
    result = widevalley.fit(
        EXAMPLES / "regression" / "config.toml", local=True, verbose=False,
        overrides=small(tmp_path, algorithm, *ALGORITHMS[algorithm]),
    )  # fmt: skip
    s = result.summary
    where = "replica_mean" if algorithm in UNCOUPLED_ALGORITHMS else "center"
    assert s["headline"] == f"{where}_test_loss" and s["headline_mode"] == "min"
    assert not any("accuracy" in key for key in s), "no accuracy is invented for regression"
    assert 0 < s["center_test_loss"] < 10 and len(s["replica_test_loss"]) == 2
    assert s["replica_mean_test_loss"] == pytest.approx(sum(s["replica_test_loss"]) / 2)
    assert result.metrics.num_rows == 4 and result.headline == s[f"{where}_test_loss"]
    x = torch.randn(3, 8)
    assert result.model()(x).shape == (3,)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_gru_project_trains_with_every_algorithm(algorithm: str, tmp_path: Path) -> None:
    result = widevalley.fit(
        EXAMPLES / "gru_mnist1d" / "config.toml", local=True, verbose=False,
        overrides=small(tmp_path, algorithm, *ALGORITHMS[algorithm],
                        "data.kwargs={train_size = 400, step = 8}", "model.kwargs={hidden = 8}"),
    )  # fmt: skip
    s = result.summary
    where = "replica_mean" if algorithm in UNCOUPLED_ALGORITHMS else "center"
    assert s["headline"] == f"{where}_test_accuracy"
    assert ("center_note" in s) == (algorithm in UNCOUPLED_ALGORITHMS)
    assert 0 <= s["center_test_accuracy"] <= 1 and "center_test_loss" in s
    assert set(result.center_state_dict) >= {"gru.weight_ih_l0", "head.weight"}


def test_objects_given_to_the_api_train_like_their_import_paths(tmp_path: Path) -> None:
    from curvefit.data import make
    from curvefit.losses import mse
    from curvefit.model import Regressor

    named = widevalley.fit(EXAMPLES / "regression" / "config.toml", local=True, verbose=False,
                           overrides=small(tmp_path, "named"))  # fmt: skip
    given = widevalley.fit(
        overrides=small(tmp_path, "given", "data.batch_size=50"), local=True, verbose=False,
        model=Regressor, model_kwargs={"hidden": 32}, data=make,
        data_kwargs={"samples": 2000, "dims": 8}, loss=mse,
    )  # fmt: skip
    assert given.summary["center_sha256"] == named.summary["center_sha256"]
    x, y = make(samples=200)[1]
    in_memory = widevalley.fit(
        overrides=small(tmp_path, "tensors", "data.batch_size=20"), local=True, verbose=False,
        model=Regressor, data=make(samples=200), loss="mse",
    )  # fmt: skip
    assert in_memory.config.data.kwargs["fingerprint"]
    assert in_memory.model()(x).shape == y.shape


def test_a_packed_user_model_matches_the_unpacked_one(tmp_path: Path) -> None:
    config = EXAMPLES / "regression" / "config.toml"
    alone = widevalley.fit(config, local=True, verbose=False, overrides=small(tmp_path, "alone"))
    packed = widevalley.fit(config, local=True, verbose=False, overrides=small(
        tmp_path, "packed", "resources.replicas_per_actor=2"))  # fmt: skip
    for key, value in alone.center_state_dict.items():
        torch.testing.assert_close(packed.center_state_dict[key], value, rtol=0, atol=1e-5)


def test_a_model_that_cannot_be_packed_fails_before_the_run(tmp_path: Path) -> None:
    sets = small(tmp_path, "gru", "resources.replicas_per_actor=2", "model.kwargs={hidden=4}")
    config = widevalley.load_config(EXAMPLES / "gru_mnist1d" / "config.toml", sets)
    with pytest.raises(ConfigError, match=r"cannot be packed \(RuntimeError: Batching rule"):
        check_parts(config, remote=False)


def test_a_user_model_resumes_exactly(tmp_path: Path) -> None:
    config = widevalley.load_config(EXAMPLES / "regression" / "config.toml", small(
        tmp_path, "cut", "train.rounds=4", "train.checkpoint_every=2"))  # fmt: skip
    whole = widevalley.fit(config, local=True, verbose=False, overrides=["run.name=whole"])
    crashed = Coordinator(config, LocalGroup)
    for _ in range(3):  # a checkpoint at 2, then a round the crash loses
        crashed.step()
    crashed.lease.release()  # the process that held it is gone
    resumed = widevalley.fit(config, local=True, verbose=False)
    assert resumed.summary["resumed_from"] == 2
    assert resumed.summary["center_sha256"] == whole.summary["center_sha256"]


def test_import_paths_are_resolved_where_the_replica_runs(tmp_path: Path) -> None:
    config = widevalley.load_config(EXAMPLES / "regression" / "config.toml")
    parts = Parts.from_config(config)
    assert parts.model.__module__ == "curvefit.model" and parts.metric is None
    assert parts.loss.__module__ == "curvefit.losses"
