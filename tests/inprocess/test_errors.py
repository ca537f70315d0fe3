"""Tier 2: one root for every error the Python API raises (widevalley.WideValleyError).

A program around widevalley.fit catches bad input and a failed run with one clause, and
still tells the kinds apart (and matches them by their built-in classes, as before).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import widevalley
from widevalley import WideValleyError

BUILT_IN = {"ConfigError": ValueError, "DatasetError": ValueError, "StorageError": OSError,
            "ResumeMismatch": ValueError, "RunFailed": RuntimeError,
            "DivergenceError": RuntimeError, "LeaseHeld": RuntimeError,
            "CapacityError": RuntimeError, "ResourceError": RuntimeError}  # fmt: skip


def test_every_exported_error_is_a_wide_valley_error_and_keeps_its_built_in_class() -> None:
    errors = [
        getattr(widevalley, name)
        for name in widevalley.__all__
        if isinstance(getattr(widevalley, name), type)
        and issubclass(getattr(widevalley, name), BaseException)
    ]
    assert len(errors) >= 14, errors
    assert all(issubclass(e, WideValleyError) for e in errors), errors
    for name, base in BUILT_IN.items():
        assert issubclass(getattr(widevalley, name), base), name


def small(tmp_path: Path, *extra: str) -> list[str]:
    return [f"run.storage={tmp_path}", "run.name=e", "algorithm.replicas=2",
            "algorithm.coupling_period=2", "train.rounds=2", "train.eval_every=2",
            "model.kwargs={hidden = 8}", "data.batch_size=16", *extra]  # fmt: skip


def data() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return (x, y), (x[:32], y[:32])


class Net(nn.Module):
    def __init__(self, hidden: int = 8, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: Tensor) -> Tensor:
        if self.fail and len(x) == 16:  # the checks (a batch of 4) pass; every step fails
            raise RuntimeError("a bug in forward")
        out: Tensor = self.layers(x)
        return out


def test_bad_input_is_caught_as_a_wide_valley_error(tmp_path: Path) -> None:
    with pytest.raises(WideValleyError, match=r"algorithm\.replicas"):
        widevalley.fit(overrides=small(tmp_path, "algorithm.replicas=0"), model=Net, data=data,
                       local=True, verbose=False)  # fmt: skip


def test_resuming_with_other_settings_is_caught_as_a_wide_valley_error(tmp_path: Path) -> None:
    widevalley.fit(overrides=small(tmp_path), model=Net, data=data, local=True, verbose=False)
    with pytest.raises(WideValleyError) as caught:
        widevalley.fit(overrides=small(tmp_path, "train.rounds=4", "algorithm.lr=0.5"),
                       model=Net, data=data, local=True, verbose=False)  # fmt: skip
    assert isinstance(caught.value, widevalley.ResumeMismatch), caught.value


def test_a_failed_run_is_caught_as_a_wide_valley_error(tmp_path: Path) -> None:
    with pytest.raises(WideValleyError) as caught:
        widevalley.fit(overrides=small(tmp_path, "model.kwargs={hidden = 8, fail = true}"),
                       model=Net, data=data, local=True, verbose=False)  # fmt: skip
    assert isinstance(caught.value, widevalley.RunFailed), caught.value


def test_an_unexpected_error_arrives_as_a_coordinator_error_with_its_cause(
    tmp_path: Path,
) -> None:
    """A metric that fails on the whole test set (not on the checks' small batch): not an
    error of ours, so it comes as CoordinatorError carrying it, and still as its class."""

    def metric(outputs: Tensor, targets: Tensor) -> Tensor:
        if len(targets) == 32:
            raise KeyError("metric broke")
        return (outputs.argmax(1) == targets).float().mean()

    with pytest.raises(WideValleyError) as caught:
        widevalley.fit(overrides=small(tmp_path), model=Net, data=data, metric=metric,
                       local=True, verbose=False)  # fmt: skip
    assert isinstance(caught.value, widevalley.CoordinatorError)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value.cause, KeyError)


class DictModel(Net):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return {"logits": self.layers(x)}


def test_a_model_returning_a_dict_is_one_line_of_bad_input(tmp_path: Path) -> None:
    """It was a raw AttributeError (the check read .shape while building its message)."""
    with pytest.raises(widevalley.ConfigError, match="returned a dict: its forward must"):
        widevalley.fit(overrides=small(tmp_path), model=DictModel, data=data, local=True,
                       verbose=False)  # fmt: skip


def test_a_lambda_is_refused_since_it_cannot_be_recorded(tmp_path: Path) -> None:
    """Every lambda recorded as `_lambda_`: a resume with another lambda was accepted."""
    with pytest.raises(widevalley.ConfigError, match="model: a lambda cannot be recorded"):
        widevalley.fit(overrides=small(tmp_path), model=lambda hidden: Net(hidden), data=data,
                       local=True, verbose=False)  # fmt: skip


class Edited(Net):
    """The user's Net after an edit: the same import path, other parameter shapes."""

    def __init__(self, hidden: int = 8, fail: bool = False) -> None:
        super().__init__(hidden, fail)
        self.layers = nn.Sequential(nn.Linear(4, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, 3))


Edited.__qualname__ = Net.__qualname__


def test_resuming_with_a_model_of_other_shapes_is_one_line(tmp_path: Path) -> None:
    """It was a raw `ValueError: flat vector of (1642,) != (3274,)`."""
    widevalley.fit(overrides=small(tmp_path), model=Net, data=data, local=True, verbose=False)
    more = small(tmp_path, "train.rounds=4")
    with pytest.raises(
        widevalley.ResumeMismatch, match="a model with 67 parameters; this model has 131"
    ):
        widevalley.fit(overrides=more, model=Edited, data=data, local=True, verbose=False)


class Reshaped(Net):
    """An edit that keeps the import path and the count (67 parameters), not the shapes."""

    def __init__(self, hidden: int = 8, fail: bool = False) -> None:
        super().__init__(hidden, fail)
        first = nn.Linear(4, hidden, bias=False)
        self.layers = nn.Sequential(first, nn.ReLU(), nn.Linear(hidden, 3))
        self.gain = nn.Parameter(torch.ones(hidden))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers[2](torch.relu(self.layers[0](x) * self.gain))
        return out


Reshaped.__qualname__ = Net.__qualname__


def test_resuming_with_another_model_of_the_same_size_is_one_line(tmp_path: Path) -> None:
    """A resume took the checkpoint's 67 numbers into other shapes, silently."""
    widevalley.fit(overrides=small(tmp_path), model=Net, data=data, local=True, verbose=False)
    more = small(tmp_path, "train.rounds=4")
    says = ("whose tensor 0 is layers.0.weight of shape \\(8, 4\\); this model's is gain "
            "of shape \\(8,\\): resume with the same model")  # fmt: skip
    with pytest.raises(widevalley.ResumeMismatch, match=says):
        widevalley.fit(overrides=more, model=Reshaped, data=data, local=True, verbose=False)
