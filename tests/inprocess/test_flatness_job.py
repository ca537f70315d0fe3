"""Tier 2: the flatness report (python -m jobs.flatness --local) on tiny real run directories."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import matplotlib.image
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from flatmath.flat import flatten_state, unflatten_state_
from foundation.config import load_config
from foundation.evaluation import metrics, recompute_batchnorm
from foundation.models import build_model
from foundation.storage import Storage
from jobs import flatness
from landscape import INVARIANCE, INVARIANCE_NOTES, hessian_top_eigenvalues
from replicas.replica import Replica

SIGMAS = ["0", "0.25", "0.5"]
ADDITIVE = ["0", "0.01", "0.02"]
TOP_K = 2
# Small everything: M = 3 draws, a 200-sample subset, few HVPs. Enough to test the plumbing
# and the invariance check (which is exact draw by draw), not to measure flatness.
FAST = [
    "--local", "--samples", "3", "--subset", "200", "--sigmas", *SIGMAS,
    "--additive-sigmas", *ADDITIVE, "--top-k", str(TOP_K), "--lanczos-steps", "30",
    "--trace-samples", "4", "--density-probes", "1", "--density-steps", "12",
]  # fmt: skip
MODELS = {"center", "replica 0", "replica 1",
          "baseline center", "baseline replica 0", "baseline replica 1"}  # fmt: skip


def train(storage: Path, data_root: Path, name: str, *overrides: str) -> Path:
    """A real run directory: 2 replicas, 4 rounds of K = 5, checkpointed at the end."""
    config = load_config(
        None,
        [
            f"run.storage={storage}", f"run.name={name}", f"data.root={data_root}",
            "algorithm.replicas=2", "algorithm.coupling_period=5", "train.rounds=4",
            "train.eval_every=2", *overrides,
        ],
    )  # fmt: skip
    coordinator = Coordinator(config, LocalGroup)
    while not coordinator.done:
        coordinator.step()
    coordinator.finish()
    return storage / name


def run_job(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = flatness.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Path]:
    storage = tmp_path_factory.mktemp("flat-runs")
    return {
        "rsgd": train(storage, data_root, "rsgd"),
        "sgd": train(storage, data_root, "sgd", "algorithm.kind=sgd"),
        "cnn1d": train(storage, data_root, "cnn1d", "model.arch=cnn1d"),
    }


@pytest.fixture(scope="module")
def report(runs: dict[str, Path]) -> tuple[Path, str]:
    """The job once on the mlp run with the sgd baseline and the α = 10 rescaling check."""
    code, out, err = run_job(
        ["--run", str(runs["rsgd"]), "--baseline", str(runs["sgd"]), "--rescale-check", "10",
         *FAST]
    )  # fmt: skip
    assert code == 0, err
    return runs["rsgd"], out


def test_writes_a_tidy_table_with_every_model_and_measure(report: tuple[Path, str]) -> None:
    run, _ = report
    table = pq.read_table(run / "flatness.parquet")
    assert table.schema.names == flatness.SCHEMA.names
    rows: list[dict[str, Any]] = table.to_pylist()
    assert {r["model"] for r in rows} == MODELS
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]

        def count(measure: str, quantity: str, mine: list[dict[str, Any]] = mine) -> int:
            return sum(r["measure"] == measure and r["quantity"] == quantity for r in mine)

        # One row per noise × split × σ, for the loss and for the error.
        for noise in ("multiplicative", "additive"):
            assert count(f"local_energy_{noise}", "loss_delta") == 2 * len(SIGMAS)
            assert count(f"local_energy_{noise}", "error_delta") == 2 * len(SIGMAS)
            assert count(f"local_energy_{noise}", "base_loss") == 2
        assert count("hessian_top_eigenvalue", "eigenvalue") == TOP_K
        assert count("hessian_trace", "trace") == 1
        assert count("hessian_spectral_density", "node_weight") >= 2
        assert count("accuracy", "accuracy") == 1
        eigen = [r["value"] for r in mine if r["quantity"] == "eigenvalue"]
        assert eigen == sorted(eigen, reverse=True) and eigen[0] > 0
        weights = [r["value"] for r in mine if r["quantity"] == "node_weight"]
        assert sum(weights) == pytest.approx(1.0, abs=1e-9)  # SLQ weights of one probe
    for r in rows:
        assert r["invariant"] == INVARIANCE.get(r["measure"]), r
        if r["quantity"] in ("loss_delta", "error_delta"):
            assert r["split"] in ("train", "test") and r["stderr"] is not None
            if r["sigma"] == 0.0:  # δE(0) is exactly zero: the same weights
                assert r["value"] == 0.0
    sigmas = {r["sigma"] for r in rows if r["measure"] == "local_energy_additive"} - {None}
    assert sigmas == {float(s) for s in ADDITIVE}


def test_summary_json_states_subset_samples_seed_times_and_invariance(
    report: tuple[Path, str],
) -> None:
    run, _ = report
    summary = json.loads((run / "flatness.json").read_text())
    settings = summary["settings"]
    assert settings["subset_train"] == 200 and settings["samples"] == 3 and settings["seed"] == 0
    assert settings["hessian_data"] == "the first 200 of the 4000 mnist1d training samples"
    assert settings["execution"] == "local"
    assert summary["invariance"] == {
        m: {"invariant": v, "note": INVARIANCE_NOTES[m]} for m, v in INVARIANCE.items()
    }
    assert set(summary["models"]) == MODELS
    table = pq.read_table(run / "flatness.parquet").to_pylist()
    for name, model in summary["models"].items():
        top = [r["value"] for r in table if r["model"] == name and r["quantity"] == "eigenvalue"]
        assert model["top_eigenvalue"] == top[0]
        assert model["trace"]["stderr"] > 0 and model["subset"] == {"train": 200, "test": 200}
        assert set(model["local_energy"]["multiplicative"]["train"]) == {"0.25", "0.5"}
        for measure in INVARIANCE:
            assert model["wall_seconds"][measure] > 0
    assert summary["baseline"]["algorithm"] == "sgd"
    # An sgd run's center averages independent nets: the baseline to beat is its replicas.
    against = {v["against"] for v in summary["verdicts"]}
    assert against == {"this run's replicas", "the baseline's replicas (independent SGD runs)"}


def test_prints_the_table_and_which_model_is_flatter(report: tuple[Path, str]) -> None:
    _, out = report
    header = next(line for line in out.splitlines() if line.startswith("model "))
    for column in ("test acc", "λ_max", "tr H ± se", "δE×(σ=0.25) ± se", "δE×(σ=0.5) ± se"):
        assert column in header
    for model in MODELS:
        assert any(line.startswith(model) for line in out.splitlines()), model
    assert "baseline center*" in out  # flagged as an average, not a trained model
    assert "Which is flatter?" in out and "Dinh" in out
    verdicts = [line for line in out.splitlines() if "→" in line]
    assert len(verdicts) == 2 * 6  # 6 measures against the replicas and the baseline
    assert all(("center flatter" in v) or ("center sharper" in v) or ("no clear" in v)
               for v in verdicts)  # fmt: skip
    done = [line for line in out.splitlines() if ": done in " in line]  # progress per model
    assert len(done) == 6 and done[-1].startswith("[6/6] baseline replica 1: done in")


def test_plots_are_valid_pngs(report: tuple[Path, str]) -> None:
    run, _ = report
    for name in ("local_energy.png", "hessian.png"):
        path = run / "plots" / name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert 20_000 < len(data) < 2_000_000, (name, len(data))
        height, width, _ = matplotlib.image.imread(path).shape
        assert width >= 800 and height >= 500, (name, width, height)


def test_rescale_check_finds_multiplicative_energy_invariant_and_eigenvalue_not(
    report: tuple[Path, str],
) -> None:
    run, out = report
    check = json.loads((run / "rescale_check.json").read_text())
    assert check["alpha"] == 10
    for name, model in check["models"].items():
        assert model["predictions_unchanged"], name
        assert model["max_abs_prediction_diff"] < 1e-4, name
        assert model["pairs"] == [[1, 3], [3, 5]]
    measures = check["measures"]
    assert measures["local_energy_multiplicative"]["observed"] == "invariant"
    assert measures["hessian_top_eigenvalue"]["observed"] == "NOT invariant"
    for name, entry in measures.items():  # what the check saw is what landscape says
        assert entry["matches"], (name, entry)
    for ratio in measures["local_energy_multiplicative"]["ratio"].values():
        assert ratio == pytest.approx(1.0, abs=1e-3)
    for ratio in measures["hessian_top_eigenvalue"]["ratio"].values():
        assert ratio > 5
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()[:1]}
    # measure, ratios, observed, landscape.INVARIANCE, whether they agree
    assert lines["local_energy_multiplicative"].split()[-3:] == [
        "invariant",
        "invariant",
        "matches",
    ]
    observed = lines["hessian_top_eigenvalue"].split()[-5:]
    assert observed == ["NOT", "invariant", "NOT", "invariant", "matches"]


def test_center_batchnorm_statistics_are_recomputed(runs: dict[str, Path]) -> None:
    loaded = flatness.open_run(str(runs["cnn1d"]))
    center, replica = flatness.model_specs(loaded, "run")[:2]
    model, note = flatness.prepare_model(center)
    assert note.startswith("recomputed on the first 2000 training samples")
    data = flatness.dataset_of(loaded.config)

    def bn(m: nn.Module) -> nn.BatchNorm1d:
        layer = m.get_submodule("2")
        assert isinstance(layer, nn.BatchNorm1d)
        return layer

    averaged = build_model("cnn1d", (40,), 10)
    unflatten_state_(averaged, torch.as_tensor(loaded.state["center"]))
    assert not torch.allclose(
        cast(torch.Tensor, bn(model).running_mean),
        cast(torch.Tensor, bn(averaged).running_mean),
        atol=1e-4,
    )
    # What update_bn must have found: the mean of the first conv's output over the first
    # bn_batches × batch_size training samples (equal batches, so their average is exact).
    with torch.no_grad():
        features = model.get_submodule("1")(model.get_submodule("0")(data.train.x[:2000]))
    torch.testing.assert_close(bn(model).running_mean, features.mean(dim=(0, 2)))
    # A replica keeps its own statistics, exactly as trained.
    own, own_note = flatness.prepare_model(replica)
    assert own_note == "the replica's own running statistics"
    trained = build_model("cnn1d", (40,), 10)
    unflatten_state_(trained, torch.as_tensor(loaded.state["replicas"][0]["flat"]))
    assert torch.equal(
        cast(torch.Tensor, bn(own).running_mean), cast(torch.Tensor, bn(trained).running_mean)
    )


def test_the_measured_center_is_the_one_with_recomputed_statistics(
    runs: dict[str, Path],
) -> None:
    loaded = flatness.open_run(str(runs["cnn1d"]))
    center = flatness.model_specs(loaded, "run")[0]
    settings = flatness.Settings(samples=2, subset=200, sigmas=(0.0, 0.1),
                                 additive_sigmas=(0.0, 0.01), top_k=1, trace_samples=2,
                                 density_probes=1, density_steps=4)  # fmt: skip
    result = flatness.measure_model(center, settings)
    assert result["batchnorm"].startswith("recomputed")
    model, _ = flatness.prepare_model(center)
    averaged = build_model("cnn1d", (40,), 10).eval()
    unflatten_state_(averaged, torch.as_tensor(loaded.state["center"]))
    data = flatness.dataset_of(loaded.config)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(data.test.x), data.test.y))
        averaged_loss = float(F.cross_entropy(averaged(data.test.x), data.test.y))
    assert result["summary"]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert abs(averaged_loss - loss) > 1e-3  # so the check above can tell them apart


def test_the_center_is_the_runs_center_when_part_of_train_is_held_out(data_root: Path) -> None:
    """With data.validation > 0 a run trains on the rest of the training set, and its
    replicas recompute the center's BatchNorm statistics there: so must the report, or
    its "center" is another model than the run's."""
    config = load_config(
        None, [f"data.root={data_root}", "model.arch=cnn1d", "data.validation=0.2"]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        vector = flatten_state(build_model("cnn1d", (40,), 10)).detach().numpy().copy()
    center = flatness.ModelSpec("center", "run", "center", "held-out", 0, config, vector)
    model, note = flatness.prepare_model(center)
    assert note.startswith("recomputed on the first 2000 training samples")
    replica = Replica(0, config)
    theirs = replica.evaluate(vector)["center"]  # the center as the run itself reports it
    loss, accuracy, _ = metrics(model, replica.data.test)
    assert (loss, accuracy) == (theirs["test_loss"], theirs["test_accuracy"])
    # The whole training set (what the report used before) gives another center.
    whole, _ = flatness.prepare_model(center)
    full = flatness.dataset_of(config).train.x
    recompute_batchnorm(whole, full, config.data.batch_size, config.train.bn_batches)
    assert abs(metrics(whole, replica.data.test)[0] - loss) > 1e-6


def test_rescale_check_of_a_batchnorm_model_says_why_it_cannot(runs: dict[str, Path]) -> None:
    code, out, err = run_job(
        ["--run", str(runs["cnn1d"]), "--rescale-check", "10", "--max-replicas", "0", *FAST]
    )
    assert code == 0, err
    check = json.loads((runs["cnn1d"] / "rescale_check.json").read_text())
    skipped = check["models"]["center"]["skipped"]
    assert "BatchNorm1d" in skipped and "cannot rescale" in skipped
    assert "center: cannot rescale this model: layer 2 (BatchNorm1d)" in out
    assert "no model could be rescaled" in out
    assert check["measures"]["hessian_trace"]["observed"] is None


BadArgs = Callable[[dict[str, Path], Path], list[str]]


def _no_checkpoint(runs: dict[str, Path], tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    shutil.copy(runs["rsgd"] / "config.toml", tmp / "empty" / "config.toml")
    return ["--run", str(tmp / "empty")]


BAD: dict[str, tuple[BadArgs, str]] = {
    "missing run dir": (
        lambda runs, tmp: ["--run", str(tmp / "nowhere" / "run")],
        "wv: error: run directory not found: {tmp}/nowhere/run",
    ),
    "missing baseline": (
        lambda runs, tmp: ["--run", str(runs["rsgd"]), "--baseline", str(tmp / "gone")],
        "wv: error: run directory not found: {tmp}/gone",
    ),
    "not a run dir": (
        lambda runs, tmp: ["--run", str(tmp)],
        "wv: error: {tmp} is not a run directory: it has no config.toml",
    ),
    "no checkpoint": (
        _no_checkpoint,
        "wv: error: no verified checkpoint in {tmp}/empty/checkpoints",
    ),
    "negative sigma": (
        lambda runs, tmp: ["--run", str(runs["rsgd"]), "--sigmas", "0", "-0.1"],
        "wv: error: --sigmas must be finite values >= 0, got [0.0, -0.1]",
    ),
    "bad alpha": (
        lambda runs, tmp: ["--run", str(runs["rsgd"]), "--rescale-check", "0"],
        "wv: error: --rescale-check ALPHA must be > 0, got 0.0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(case: str, runs: dict[str, Path], tmp_path: Path) -> None:
    make_args, expected = BAD[case]
    code, out, err = run_job([*make_args(runs, tmp_path), "--local"])
    assert code == 2
    assert err.strip() == expected.format(tmp=tmp_path), err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "nowhere").exists()  # looking did not create it


def test_a_run_on_s3_gets_its_report_next_to_it(data_root: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in keys.items():
                env.setenv(key, value)
            endpoint = f"http://127.0.0.1:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                Bucket="wv-flat"
            )
            options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
            storage = f"s3://wv-flat/runs?{options}"
            config = load_config(
                None,
                [f"run.storage={storage}", "run.name=remote", f"data.root={data_root}",
                 "algorithm.replicas=2", "algorithm.coupling_period=5", "train.rounds=2"],
            )  # fmt: skip
            coordinator = Coordinator(config, LocalGroup)
            while not coordinator.done:
                coordinator.step()
            coordinator.finish()
            code, _, err = run_job(["--run", f"s3://wv-flat/runs/remote?{options}", *FAST])
            assert code == 0, err
            run = Storage(storage).child("remote")
            for name in ("flatness.parquet", "flatness.json", "plots/local_energy.png",
                         "plots/hessian.png"):  # fmt: skip
                assert run.exists(name), name
            summary = json.loads(run.read_bytes("flatness.json"))
            assert set(summary["models"]) == {"center", "replica 0", "replica 1"}
            code, _, err = run_job(["--run", f"s3://wv-flat/runs/missing?{options}", "--local"])
            assert (code, err) == (
                2,
                "wv: error: run directory not found: s3://wv-flat/runs/missing\n",
            )
    finally:
        server.stop()


# A user's model, data and loss, named by import path as a config names them: a tiny
# regression (float targets, one output per row, MSE, no metric), so no accuracy exists.
HERE = "tests.inprocess.test_flatness_job"
USER_REGRESSION = [
    f"model.arch={HERE}:TinyRegressor", "model.kwargs={hidden = 8}",
    f"data.dataset={HERE}:tiny_regression", "data.kwargs={n = 256}",
    "train.loss=mse", "data.batch_size=32",
]  # fmt: skip


class TinyRegressor(nn.Module):
    """One hidden ReLU layer and ONE output per row (a 1-D output, as many regressors
    return: the flatness report must cope with it)."""

    def __init__(self, input_shape: tuple[int, ...], hidden: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out.squeeze(1)


def tiny_regression(n: int = 128) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """y = sin(x · w) + noise on 4 inputs: n training rows and n / 2 test rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n // 2, 4, generator=g)
    y = torch.sin(x @ torch.tensor([1.0, -0.5, 0.25, 2.0])) + 0.1 * torch.randn(len(x), generator=g)
    return (x[:n], y[:n]), (x[n:], y[n:])


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return train(tmp_path_factory.mktemp("flat-user"), data_root, "regression", *USER_REGRESSION)


def test_a_user_regression_model_is_measured_with_its_loss_and_no_accuracy(
    regression_run: Path,
) -> None:
    code, out, err = run_job(["--run", str(regression_run), *FAST])
    assert code == 0, err
    run_summary = json.loads((regression_run / "summary.json").read_text())
    assert run_summary["headline"] == "center_test_loss"  # the run has no metric
    summary = json.loads((regression_run / "flatness.json").read_text())
    assert (summary["loss"], summary["headline"]) == ("mse", "test_loss")
    assert set(summary["models"]) == {"center", "replica 0", "replica 1"}
    # The run's own center, judged by the run's own loss.
    center = summary["models"]["center"]
    assert center["test_loss"] == pytest.approx(run_summary["center_test_loss"], rel=1e-5)
    for name, model in summary["models"].items():
        assert (model["headline"], model["headline_mode"]) == ("test_loss", "min")
        assert not [k for k in model if "accuracy" in k or "error" in k], name
        for noise in ("multiplicative", "additive"):
            for points in model["local_energy"][noise].values():
                assert all(set(p) == {"loss_delta", "loss_delta_stderr"} for p in points.values())
    rows = pq.read_table(regression_run / "flatness.parquet").to_pylist()
    scores = {(r["measure"], r["quantity"]) for r in rows if r["invariant"] is None}
    assert scores == {("loss", "loss")}  # the test loss, and no accuracy row
    assert not [r for r in rows if r["quantity"] in ("accuracy", "error_delta", "base_error")]
    assert all(r["value"] == 0.0 for r in rows if r["quantity"] == "loss_delta" and r["sigma"] == 0)
    # Every measure is of the MSE landscape: the base loss of δE and the top eigenvalues.
    spec = flatness.model_specs(flatness.open_run(str(regression_run)), "run")[0]
    model, _ = flatness.prepare_model(spec)
    data = flatness.dataset_of(spec.config)
    x, y = data.train.x[:200], data.train.y[:200]
    with torch.no_grad():
        mse = float(F.mse_loss(model(x), y))
    where = ("center", "local_energy_multiplicative", "base_loss", "train")
    base = [r["value"] for r in rows
            if (r["model"], r["measure"], r["quantity"], r["split"]) == where]  # fmt: skip
    assert base == [pytest.approx(mse, rel=1e-6)]
    eigen = hessian_top_eigenvalues(model, x, y, k=TOP_K, loss_fn=F.mse_loss, max_steps=30)
    assert center["top_eigenvalues"] == pytest.approx(eigen.values.tolist(), rel=1e-4)
    # What is printed: a test-loss column and line, the loss named, no accuracy anywhere.
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert "test loss" in header and "λ_max" in header
    assert "accuracy" not in out and "test acc" not in out
    assert "Hessian of the mean training loss (mean squared error)" in out
    lines = [line.strip() for line in out.split("Which is flatter?", 1)[1].splitlines()]
    assert any(line.startswith("test loss        center ") for line in lines)
    done = [line for line in out.splitlines() if ": done in " in line]
    assert len(done) == 3 and all(", test loss " in line for line in done)


def test_a_model_that_cannot_be_imported_is_one_line_naming_the_key(
    regression_run: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(regression_run, moved)
    config = moved / "config.toml"
    config.write_text(config.read_text().replace(f"{HERE}:TinyRegressor", "tests.nowhere:Net"))
    code, out, err = run_job(["--run", str(moved), "--local"])
    assert (code, out) == (2, "")
    assert err == (
        f"wv: error: {moved}/config.toml: model.arch = 'tests.nowhere:Net': cannot import "
        "tests.nowhere (ModuleNotFoundError: No module named 'tests.nowhere')\n"
    )
