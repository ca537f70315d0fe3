"""jobs/compare/ on a local Ray: a reduced comparison whose every number must come
back out of a run directory, and the CIFAR-10 path on stand-in data in the raw format."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from jobs import CONFIG_DIR
from jobs.compare.command import main
from jobs.compare.methods import LABELS, METHODS, SWEPT

pytestmark = pytest.mark.ray


def summary_value(method: str, s: dict[str, Any], m: dict[str, Any]) -> tuple[float, float]:
    """(test, train) accuracy of a table entry, read the way the protocol defines it."""
    if method in ("sgd", "sgd_long", "esgd"):
        return float(np.mean(s["replica_test_accuracy"])), float(
            np.mean(s["replica_train_accuracy"])
        )
    if method == "ensemble":
        return s["ensemble_test_accuracy"], m["ensemble_train_accuracy"]
    return s["center_test_accuracy"], s["center_train_accuracy"]


def cell(values: list[float], digits: int = 3) -> str:
    v = [x for x in values if math.isfinite(x)]
    if len(v) < 2:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def table_rows(text: str, heading: str) -> list[list[str]]:
    block = text.split(heading, 1)[1].split("\n\n", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def check_against_run_dirs(out: Path, model: str, heading: str, seeds: int, steps: int) -> None:
    rows = pq.read_table(out / "results" / "compare.parquet").to_pylist()
    mine = [r for r in rows if r["model"] == model]
    assert sorted({r["method"] for r in mine}) == sorted(METHODS)
    assert len(mine) == len(METHODS) * seeds
    for r in mine:
        run = Path(r["run_dir"])
        s = json.loads((run / "summary.json").read_text())
        m = json.loads((run / "compare.json").read_text())
        config = (run / "config.toml").read_text()
        assert f'arch = "{model}"' in config and "validation = 0.0" in config
        assert f"seed = {r['seed']}" in config
        test, train = summary_value(r["method"], s, m)
        assert (r["test_accuracy"], r["train_accuracy"]) == (test, train), r["run_dir"]
        assert r["gap"] == pytest.approx(train - test)
        assert r["wall_seconds"] == s["wall_seconds"]
        budget = steps * (4 if r["method"] == "sgd_long" else 1)
        assert s["gradient_evaluations_per_replica"] == budget
        assert s["replicas"] == (1 if r["method"] == "sgd_long" else 4)
        if r["method"] == "ensemble":
            assert math.isnan(r["dE_0"]) and math.isnan(r["lambda_max"])
        else:
            grid = m["sigmas"]
            assert r["dE_0"] == m["loss_delta"][grid.index(0.1)]
            assert r["dE_1"] == m["loss_delta"][grid.index(0.3)]
            assert r["lambda_max"] == m["lambda_max"] and r["lambda_max"] > 0
            assert m["loss_delta"][grid.index(0.0)] == 0.0  # δE(0) is exactly zero
    text = (out / "RESULTS.md").read_text()
    table = table_rows(text, heading)
    assert [t[0] for t in table] == [LABELS[k] for k in METHODS]
    for t in table:
        assert len(t) == 9
        method = next(k for k, v in LABELS.items() if v == t[0])
        runs = [r for r in mine if r["method"] == method]
        assert t[1] == cell([r["test_accuracy"] for r in runs])
        assert t[2] == cell([r["train_accuracy"] for r in runs])
        assert t[3] == cell([r["gap"] for r in runs])
        assert t[7] == cell([r["wall_seconds"] for r in runs], 1)
        assert t[8] == str(seeds)
        if method == "ensemble":
            assert t[4] == t[5] == t[6] == "—"
        else:
            assert t[6].split(" ± ")[0] == f"{np.mean([r['lambda_max'] for r in runs]):.3g}"
    for name in ("accuracy.png", "local_energy.png"):
        assert (out / "results" / name).read_bytes()[:4] == b"\x89PNG"


SMALL_SWEEP = """
sgd = [["algorithm.lr=0.05"], ["algorithm.lr=0.1"]]
rsgd = [["scoping.gamma0=0.03", "algorithm.coupling_period=20"]]
easgd = [["scoping.gamma0=1.0", "scoping.gamma_max=1.0"]]
diloco = [["algorithm.outer_lr=1.0"]]
localsgd = [["algorithm.coupling_period=20"]]
esgd = [["algorithm.inner_lr=0.1", "algorithm.inner_steps=10"]]
parle = [["algorithm.inner_lr=0.1", "algorithm.inner_steps=10"]]
"""


def test_reduced_comparison_every_number_from_a_run_dir(
    ray_session: None, tmp_path: Path, data_root: Path
) -> None:
    started = time.time()
    out = tmp_path / "out"
    # The shipped protocol with one trial per method on its own axis (two for SGD): its
    # grids are for the real budget (not every K × L there divides this test's steps).
    # The table is checked against the run directories, not against numbers: a small
    # budget that every method's K (× L) here divides is enough.
    steps = 200
    head, rest = (CONFIG_DIR / "compare_mnist1d.toml").read_text().split("\n[sweep]\n", 1)
    small = tmp_path / "compare_mnist1d.toml"
    small.write_text(f"{head}\n[sweep]\n{SMALL_SWEEP}\n[flatness]{rest.split('[flatness]', 1)[1]}")
    argv = ["--config", str(small), "--models", "mlp",
            "--seeds", "2", "--steps", str(steps), "--storage", str(tmp_path / "runs"),
            "--output", str(out), "--set", f"data.root={data_root}"]  # fmt: skip
    assert main(argv) == 0
    assert time.time() - started < 300
    check_against_run_dirs(out, "mlp", "### MNIST-1D mlp", seeds=2, steps=steps)
    text = (out / "RESULTS.md").read_text()
    verdicts = text.split("## Did the coupled methods beat", 1)[1].split("## Did flatter", 1)[0]
    for label in ("rSGD center", "eSGD", "Parle center", "EASGD center", "DiLoCo center",
                  "local SGD center"):  # fmt: skip
        line = next(x for x in verdicts.splitlines() if x.startswith(f"- **{label}**"))
        found = re.findall(
            r"(beat|lost|no clear difference) (SGD, y× steps|ensemble of y SGD|SGD) \(", line
        )
        assert [b for _, b in found] == ["SGD", "SGD, y× steps", "ensemble of y SGD"]
    sweep = pq.read_table(out / "results" / "sweep.parquet").to_pylist()
    assert len(sweep) == 8 and all("sweep-mlp-" in r["run_dir"] for r in sweep)
    for r in sweep:  # the sweep selected on the validation split, never on test
        assert "validation = 0.2" in (Path(r["run_dir"]) / "config.toml").read_text()
    # A second invocation reuses the finished run directories and gives the same table.
    first = pq.read_table(out / "results" / "compare.parquet").to_pylist()
    assert main(argv) == 0
    again = pq.read_table(out / "results" / "compare.parquet").to_pylist()
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in first]
    assert "24 of 24 runs were finished run directories" in (out / "RESULTS.md").read_text()


# A user's model and data, named by import path in the protocol below (the Ray tasks
# import this module to build them): a tiny regression with the MSE loss and no metric,
# so the comparison is ranked by test loss, lower is better.
HERE = "tests.localray.test_compare"


class TinyRegressor(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], hidden: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def tiny_regression(n: int = 64) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """y = sin(x · w) on 4 inputs, one column: n training rows and n / 2 test rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n // 2, 4, generator=g)
    y = torch.sin(x @ torch.tensor([1.0, -0.5, 0.25, 2.0])).unsqueeze(1)
    return (x[:n], y[:n]), (x[n:], y[n:])


USER_PROTOCOL = f"""
[compare]
dataset = "{HERE}:tiny_regression"
data_kwargs = {{n = 96}}
models = ["{HERE}:TinyRegressor"]
seeds = 1
replicas = 2
validation = 0.25
set = ["train.loss=mse", "data.batch_size=16", "algorithm.coupling_period=2",
       "algorithm.inner_steps=5"]

[compare.steps]
"{HERE}:TinyRegressor" = 10

[compare.model_kwargs]
"{HERE}:TinyRegressor" = {{hidden = 6}}

[methods]
{"".join(f'{m} = "{m}.toml"{chr(10)}' for m in SWEPT)}
[sweep]
sgd = [["algorithm.lr=0.05"], ["algorithm.lr=0.001"]]
rsgd = [["scoping.gamma0=0.01"]]
esgd = [["algorithm.lr=0.5"]]
parle = [["algorithm.lr=0.25"]]
easgd = [["scoping.gamma0=1.0", "scoping.gamma_max=1.0"]]

[flatness]
subset = 40
draws = 3
sigmas = [0.0, 0.1, 0.3]
table_sigmas = [0.1, 0.3]
lanczos_steps = 5
"""


def test_a_user_model_data_and_loss_compared_by_test_loss(
    ray_session: None, tmp_path: Path
) -> None:
    model = f"{HERE}:TinyRegressor"
    protocol = tmp_path / "mine.toml"
    protocol.write_text(USER_PROTOCOL)
    out = tmp_path / "out"
    argv = ["--config", str(protocol), "--storage", str(tmp_path / "runs"),
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = pq.read_table(out / "results" / "compare.parquet")
    assert "test_loss" in table.schema.names and "test_accuracy" not in table.schema.names
    rows = table.to_pylist()
    assert sorted({r["method"] for r in rows}) == sorted(METHODS) and len(rows) == len(METHODS)
    for r in rows:
        run = Path(r["run_dir"])
        assert run.name.startswith(f"{model}-")  # an import path in a valid run name
        s = json.loads((run / "summary.json").read_text())
        m = json.loads((run / "compare.json").read_text())
        config = (run / "config.toml").read_text()
        assert f'arch = "{model}"' in config and 'loss = "mse"' in config
        assert '"hidden" = 6' in config and '"n" = 96' in config
        where = "replica_mean" if s["algorithm"] in ("sgd", "esgd") else "center"
        assert s["headline"] == f"{where}_test_loss" and not [k for k in s if "accuracy" in k]
        assert (r["headline"], r["headline_mode"], r["loss"]) == ("loss", "min", "mse")
        k = {"sgd": "replica", "sgd_long": "replica", "esgd": "replica"}.get(r["method"], "center")
        if r["method"] == "ensemble":
            test, train = s["ensemble_test_loss"], m["ensemble_train_loss"]
            assert not [key for key in m if "accuracy" in key]
        else:
            test = float(np.mean(s[f"{k}_test_loss"]))
            train = float(np.mean(s[f"{k}_train_loss"]))
            assert m["loss_delta"][m["sigmas"].index(0.0)] == 0.0  # δE(0), of the MSE
            assert r["lambda_max"] == m["lambda_max"] and math.isfinite(r["lambda_max"])
        assert (r["test_loss"], r["train_loss"]) == (test, train), r["run_dir"]
        assert r["gap"] == pytest.approx(test - train)
    text = (out / "RESULTS.md").read_text()
    assert "accuracy" not in text
    assert "Ranked by test loss, as the runs have no metric (lower is better)." in text
    head = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert head.startswith("| method | test loss | train loss | gap (test − train) |")
    assert (out / "results" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "results" / "accuracy.png").exists()
    # The sweep chose sgd's lr by the LOWER validation loss.
    sweep = pq.read_table(out / "results" / "sweep.parquet").to_pylist()
    tried = {r["hyperparameters"]: r["test_loss"] for r in sweep if r["method"] == "sgd"}
    best = min(tried, key=lambda hp: tried[hp])
    final_sgd = next(r for r in rows if r["method"] == "sgd")
    assert final_sgd["hyperparameters"] == best and len(tried) == 2
