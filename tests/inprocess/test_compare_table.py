"""jobs/compare/ without Ray: aggregation over seeds, the verdict wording, rank
correlation and the rendered table, all on hand-made numbers; and bad input as one line."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from foundation.config import load_config
from jobs import CONFIG_DIR
from jobs.compare.command import shown_command
from jobs.compare.driver import choose
from jobs.compare.headline import Headline
from jobs.compare.methods import MAX_TRIALS, METHODS, SWEPT
from jobs.compare.plan import Job, job_config, sweep_jobs
from jobs.compare.protocol import CompareError, hp_label, load_protocol
from jobs.compare.reading import chosen_json, reading_lines
from jobs.compare.rows import relative
from jobs.compare.stats import aggregate, spearman, spearman_critical, verdict
from jobs.compare.tables import flatness_lines, fmt, fmt_sci, table_lines, verdict_lines


def row(model: str, method: str, seed: int, test: float, **extra: float) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": model, "method": method, "seed": seed, "test_accuracy": test,
        "train_accuracy": test + 0.1, "gap": 0.1, "dE_0": 0.01, "dE_1": 0.1,
        "lambda_max": 3.0, "wall_seconds": 10.0,
    }  # fmt: skip
    base.update(extra)
    return base


def test_mean_and_sample_std_over_seeds() -> None:
    rows = [row("mlp", "rsgd", s, v) for s, v in enumerate([0.70, 0.72, 0.74])]
    rows += [row("mlp", "sgd", s, v) for s, v in enumerate([0.60, 0.64])]
    agg = aggregate(rows)
    mean, std, n = agg[("mlp", "rsgd")]["test_accuracy"]
    assert (round(mean, 6), round(std, 6), n) == (0.72, 0.02, 3)  # ddof = 1: std of .70 .72 .74
    mean, std, n = agg[("mlp", "sgd")]["test_accuracy"]
    assert (round(mean, 6), round(std, 6), n) == (0.62, round(math.sqrt(0.0008), 6), 2)
    assert list(agg) == [("mlp", "sgd"), ("mlp", "rsgd")]  # table order, not input order


def test_missing_values_are_left_out_not_counted_as_zero() -> None:
    rows = [row("mlp", "ensemble", s, 0.7, dE_0=math.nan, lambda_max=math.nan) for s in range(3)]
    cells = aggregate(rows)[("mlp", "ensemble")]
    assert cells["lambda_max"][2] == 0 and fmt_sci(cells["lambda_max"]) == "—"
    assert fmt(cells["test_accuracy"]) == "0.700 ± 0.000"


@pytest.mark.parametrize(
    ("a", "b", "word"),
    [
        ((0.71, 0.01, 5), (0.63, 0.02, 5), "beat"),  # Δ = +0.08 > spread 0.02
        ((0.60, 0.01, 5), (0.66, 0.01, 5), "lost"),
        ((0.71, 0.03, 5), (0.70, 0.01, 5), "no clear difference"),  # Δ 0.01 < 0.03
        ((0.715, 0.02, 5), (0.70, 0.01, 5), "no clear difference"),  # Δ 0.015 < 0.02
        ((0.90, math.nan, 1), (0.60, math.nan, 1), "no clear difference"),  # one seed: no spread
    ],
)
def test_verdict_wording(
    a: tuple[float, float, int], b: tuple[float, float, int], word: str
) -> None:
    assert verdict(a, b) == word


def test_verdict_lines_compare_each_contender_with_each_baseline() -> None:
    rows = []
    for s in range(5):
        rows += [row("mlp", "sgd", s, 0.63 + 0.002 * s), row("mlp", "sgd_long", s, 0.70 + 0.01 * s)]
        rows += [row("mlp", "ensemble", s, 0.71), row("mlp", "rsgd", s, 0.71 + 0.001 * s)]
    (line,) = verdict_lines(aggregate(rows), "mlp")
    assert line.startswith("- **rSGD center**: beat SGD (")
    assert "no clear difference SGD, y× steps" in line  # 0.712 vs 0.72 ± 0.016
    # Δ = +0.002 against an ensemble that never varies: larger than rSGD's std 0.0016.
    assert "beat ensemble of y SGD" in line
    low = [r | {"test_accuracy": 0.5 + 0.001 * r["seed"]} if r["method"] == "rsgd" else r
           for r in rows]  # fmt: skip
    (line,) = verdict_lines(aggregate(low), "mlp")
    assert "lost SGD (" in line and "lost ensemble of y SGD" in line


def test_spearman_on_known_ranks() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their average rank: x ranks (0, 1.5, 1.5, 3) against y ranks (0, 1, 2, 3).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman([1, 2], [2, 1]))
    assert math.isnan(spearman([1, math.nan, 3], [1, 2, 3]))


def test_flatter_went_with_better_is_said_only_when_ranks_agree() -> None:
    rows = []
    for s in range(3):
        for k, method in enumerate(["sgd", "sgd_long", "rsgd", "esgd", "parle", "easgd"]):
            # Accuracy rises with k, δE falls with k: flatter = better. λ_max rises with k.
            rows.append(row("mlp", method, s, 0.5 + 0.05 * k, dE_1=1.0 - 0.1 * k,
                            dE_0=0.1, lambda_max=1.0 + k))  # fmt: skip
    lines = flatness_lines(aggregate(rows), "mlp", (0.1, 0.3))
    assert "Spearman ρ = -1.00 (flatter (smaller) went with better test accuracy)" in lines[0]
    assert "not enough methods" in lines[1]  # δE(0.1) is the same for every method
    assert "Spearman ρ = +1.00 (flatter went with WORSE test accuracy)" in lines[2]


def test_a_weak_rank_correlation_is_not_called_a_relation() -> None:
    accs = [0.50, 0.55, 0.60, 0.65, 0.70, 0.75]
    energy = [0.6, 0.5, 0.4, 0.1, 0.3, 0.2]  # ρ = -0.83: below 0.886, six methods
    methods = ["sgd", "sgd_long", "rsgd", "esgd", "parle", "easgd"]
    rows = [
        row("mlp", m, s, a, dE_1=e)
        for s in range(2)
        for m, a, e in zip(methods, accs, energy, strict=True)
    ]
    line = flatness_lines(aggregate(rows), "mlp", (0.1, 0.3))[0]
    assert "ρ = -0.83 (no clear relation: |ρ| < 0.886" in line
    assert spearman_critical(6) == 0.886 and spearman_critical(4) == 1.0


def test_table_has_one_line_per_method_and_the_aggregated_cells() -> None:
    rows = [row("cnn1d", m, s, 0.6 + 0.01 * s) for m in METHODS for s in range(2)]
    lines = table_lines(aggregate(rows), "cnn1d", (0.1, 0.3))
    assert len(lines) == 2 + len(METHODS)
    assert lines[0].count("|") == 10 and "δE(σ=0.1)" in lines[0] and "δE(σ=0.3)" in lines[0]
    assert lines[2].startswith("| SGD | 0.605 ± 0.007 | 0.705 ± 0.007 |")
    assert lines[-1].startswith("| local SGD center |") and lines[-1].endswith("| 2 |")


def test_hp_label_and_rounds_check() -> None:
    assert hp_label(["scoping.gamma0=0.01", "scoping.gamma_max=1.0"]) == (
        "gamma0=0.01,gamma_max=1.0"
    )
    p = load_protocol(CONFIG_DIR / "compare_mnist1d.toml")
    with pytest.raises(CompareError, match="not a whole number of esgd rounds"):
        job_config(p, "mlp", "esgd", 0, "final", (), 510)
    cfg = job_config(p, "mlp", "sgd_long", 0, "final", ("algorithm.lr=0.05",), 6000)
    assert (cfg.algorithm.replicas, cfg.train.rounds, cfg.algorithm.lr) == (1, 2400, 0.05)
    sweep = job_config(p, "cnn1d", "rsgd", 100, "sweep", ("scoping.gamma0=0.03",), 2000)
    assert sweep.data.validation == 0.2 and sweep.run.name == "sweep-cnn1d-rsgd-gamma0=0.03"


def test_protocol_files_load(tmp_path: Path) -> None:
    for name in ("compare_mnist1d.toml", "compare_cifar10.toml"):
        p = load_protocol(CONFIG_DIR / name)
        assert p.seeds >= 5 and set(p.methods) == set(SWEPT)
        assert all(len(v) >= 2 for v in p.sweep.values())
    bad = tmp_path / "bad.toml"
    bad.write_text('[compare]\nmodels = ["mlp"]\n[methods]\nsgd = "sgd.toml"\n')
    with pytest.raises(CompareError, match="base config for rsgd"):
        load_protocol(bad)


REPO = Path(__file__).resolve().parents[2]


def test_a_dataset_that_cannot_load_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The dataset is loaded (its cache built) before any Ray task starts: bad data input is
    a user's error, as in jobs.train, not a traceback. Run through `python -m jobs.compare`
    so the exit status and stderr are the process's own."""
    command = [sys.executable, "-m", "jobs.compare", "--models", "mlp", "--seeds", "1",
               "--steps", "400", "--storage", f"{tmp_path}/runs", "--output", f"{tmp_path}/out",
               "--set", "data.root=/proc/nonexistent"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no RAY_ADDRESS: never a cluster
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("wv: error: Cannot write the dataset cache in /proc/nonexistent/")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def loss_row(method: str, seed: int, test: float) -> dict[str, Any]:
    """A row of a comparison whose runs have no metric: ranked by test loss."""
    return {
        "model": "net", "method": method, "seed": seed, "headline": "loss",
        "headline_mode": "min", "test_loss": test, "train_loss": test - 0.1, "gap": 0.1,
        "dE_0": 0.01, "dE_1": 0.1 * (1 + seed), "lambda_max": 3.0, "wall_seconds": 10.0,
    }  # fmt: skip


def test_a_loss_headline_is_ranked_lower_is_better_and_said_so() -> None:
    h = Headline("loss")
    rows = [
        loss_row(m, s, v + 0.01 * s) for m, v in (("sgd", 0.9), ("rsgd", 0.5)) for s in range(3)
    ]
    agg = aggregate(rows)
    assert set(agg[("net", "rsgd")]) >= {"test_loss", "train_loss"}
    assert "test_accuracy" not in agg[("net", "rsgd")]
    head, _, *body = table_lines(agg, "net", (0.1, 0.3), h)
    assert head.startswith("| method | test loss | train loss | gap (test − train) |")
    assert body[0].startswith("| SGD | 0.910 ± 0.010 | 0.810 ± 0.010 | 0.100 ± 0.000 |")
    (line,) = verdict_lines(agg, "net", h)
    assert line.startswith("- **rSGD center**: beat SGD (0.510 ± 0.010 vs 0.910 ± 0.010")
    assert verdict((0.9, 0.01, 3), (0.5, 0.01, 3), h) == "lost"
    # Flatter (a smaller δE) going with a LOWER loss is ρ > 0, and reads as "better".
    methods = ["sgd", "sgd_long", "rsgd", "esgd", "parle", "easgd"]
    ranked = [loss_row(m, s, 0.1 * k) | {"dE_1": 0.1 * k} for k, m in enumerate(methods)
              for s in range(2)]  # fmt: skip
    line = flatness_lines(aggregate(ranked), "net", (0.1, 0.3), h)[0]
    assert (
        "vs test loss" in line
        and "ρ = +1.00 (flatter (smaller) went with better test loss)" in line
    )


def test_the_sweep_chooses_the_lowest_validation_loss(tmp_path: Path) -> None:
    config = load_config(None, [f"run.storage={tmp_path}"])
    tried = [("algorithm.lr=0.1",), ("algorithm.lr=0.05",), ("algorithm.lr=0.01",)]
    jobs = [Job("net", "sgd", 100, "sweep", hp, config) for hp in tried]
    rows = [loss_row("sgd", 0, v) for v in (0.7, math.nan, 0.4)]
    assert choose(jobs, rows) == {("net", "sgd"): ("algorithm.lr=0.01",)}
    rows = [loss_row("sgd", 0, v) for v in (math.nan, 0.9, 0.4)]  # nan never wins
    assert choose(jobs, rows) == {("net", "sgd"): ("algorithm.lr=0.01",)}
    accuracy = [row("net", "sgd", 0, v) for v in (0.7, 0.9, 0.4)]
    assert choose(jobs, accuracy) == {("net", "sgd"): ("algorithm.lr=0.05",)}


def test_a_protocol_names_user_model_data_and_loss_by_import_path(tmp_path: Path) -> None:
    protocol = tmp_path / "mine.toml"
    methods = "".join(f'{m} = "{m}.toml"\n' for m in SWEPT)
    protocol.write_text(
        '[compare]\ndataset = "mypkg.data:load"\ndata_kwargs = {length = 40}\n'
        'models = ["mlp", "mypkg.nets:Net"]\nset = ["train.loss=mypkg.losses:huber"]\n'
        '[compare.steps]\nmlp = 400\n"mypkg.nets:Net" = 400\n'
        '[compare.model_kwargs]\n"mypkg.nets:Net" = {hidden = 64, act = "relu"}\n'
        f"[methods]\n{methods}"
    )
    p = load_protocol(protocol)
    assert p.models == ("mlp", "mypkg.nets:Net") and p.data_kwargs == {"length": 40}
    cfg = job_config(p, "mypkg.nets:Net", "rsgd", 0, "final", (), 400)
    assert (cfg.model.arch, cfg.model.kwargs) == ("mypkg.nets:Net", {"hidden": 64, "act": "relu"})
    assert (cfg.data.dataset, cfg.data.kwargs) == ("mypkg.data:load", {"length": 40})
    assert cfg.train.loss == "mypkg.losses:huber"
    assert cfg.run.name == "mypkg.nets:Net-rsgd-s0"  # an import path is a valid run name
    sweep = job_config(p, "mypkg.nets:Net", "sgd", 100, "sweep", ("algorithm.lr=0.1",), 400)
    assert sweep.run.name == "sweep-mypkg.nets:Net-sgd-lr=0.1"
    assert job_config(p, "mlp", "sgd", 0, "final", (), 400).model.kwargs == {}
    protocol.write_text(protocol.read_text().replace('"mypkg.nets:Net" = {hidden', "cnn = {hidden"))
    with pytest.raises(CompareError, match=r"model_kwargs names cnn: not in compare\.models"):
        load_protocol(protocol)


def test_each_method_is_tuned_on_its_own_axes_within_the_budget() -> None:
    """The shipped protocol: every (model, method) has 1 … MAX_TRIALS trials whose K and
    K × L divide the budget (job_config refuses otherwise), the per-model grids replace the
    shared ones, and the fixed settings reach sweep and final runs alike."""
    p = load_protocol(CONFIG_DIR / "compare_mnist1d.toml")
    jobs = sweep_jobs(p, p.steps)
    for model in p.models:
        for method in SWEPT:
            n = sum(1 for j in jobs if (j.model, j.method) == (model, method))
            assert 1 <= n <= MAX_TRIALS, (model, method, n)
    assert p.trials("mlp", "parle") != p.trials("cnn1d", "parle")
    assert p.trials("mlp", "sgd") == p.trials("cnn1d", "sgd") == p.sweep["sgd"]
    tuned = {o.partition("=")[0] for t in p.trials("cnn1d", "parle") for o in t}
    assert tuned >= {"algorithm.inner_lr", "algorithm.inner_steps", "scoping.gamma0",
                     "scoping.rho0"}  # fmt: skip
    final = job_config(p, "cnn1d", "parle", 0, "final", ("algorithm.inner_lr=0.05",), 1200)
    a = final.algorithm
    assert (a.coupling_period, a.lr, a.momentum, a.inner_lr) == (1, 1.0, 0.0, 0.05)
    assert final.train.rounds * a.coupling_period * a.inner_steps == 1200


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("sgd = [" + ", ".join(f'["algorithm.lr=0.0{i}"]' for i in range(1, 8)) + "]",
         "sweep.sgd has 7 trials: 1 to 6"),
        ('sgd = [["algorithm.lr=0.1"], ["algorithm.lr=0.1"]]', "sweep.sgd tries lr=0.1 twice"),
        ('sgd = [["algorithm.lr"]]', "'algorithm.lr' is not KEY=VALUE"),
        ('[sweep.resnet18]\nsgd = [["algorithm.lr=0.1"]]', "sweep.resnet18: neither"),
        ('[sweep.mlp]\nswa = [["algorithm.lr=0.1"]]', "sweep.mlp.swa: not a swept method"),
    ],
)  # fmt: skip
def test_a_bad_sweep_grid_is_one_clear_error(tmp_path: Path, sweep: str, message: str) -> None:
    methods = "".join(f'{m} = "{m}.toml"\n' for m in SWEPT)
    protocol = tmp_path / "p.toml"
    protocol.write_text(
        '[compare]\nmodels = ["mlp"]\n[compare.steps]\nmlp = 400\n'
        f"[methods]\n{methods}[sweep]\n{sweep}\n"
    )
    with pytest.raises(CompareError, match=re.escape(message)):
        load_protocol(protocol)


def test_committed_paths_are_relative_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert relative(REPO / "runs" / "compare") == "runs/compare"
    assert relative("runs/compare") == "runs/compare" and relative("s3://b/x") == "s3://b/x"
    shown = shown_command(["--config", str(REPO / "jobs/configs/x.toml"),
                           "--set", f"run.storage={REPO}/runs"])  # fmt: skip
    assert str(REPO) not in shown
    assert shown == "python -m jobs.compare --config jobs/configs/x.toml --set run.storage=runs"


def test_the_reading_says_who_won_and_where_the_center_lost_to_the_ensemble() -> None:
    rows = [row("mlp", m, s, v + 0.001 * s) for m, v in
            (("sgd", 0.60), ("ensemble", 0.75), ("rsgd", 0.70), ("diloco", 0.80))
            for s in range(3)]  # fmt: skip
    lines = reading_lines(aggregate(rows), "mlp", Headline("accuracy"))
    assert lines[0].startswith("- Best mean test accuracy: **DiLoCo center** (0.801 ± 0.001)")
    ensemble = next(line for line in lines if "ensemble" in line)
    assert "beat it: DiLoCo center" in ensemble
    assert "**did not beat it** (lost): rSGD center" in ensemble


def test_chosen_json_holds_the_overrides_that_reproduce_a_final_run() -> None:
    p = load_protocol(CONFIG_DIR / "compare_mnist1d.toml")
    hp = ("algorithm.inner_lr=0.1", "algorithm.inner_steps=20")
    sweep_rows = [row("cnn1d", "parle", 100, 0.9) | {"hyperparameters": " ".join(hp)}]
    out = chosen_json(p, {("cnn1d", "parle"): hp}, sweep_rows, {("cnn1d", "parle"): 60})
    entry = out["cnn1d"]["parle"]
    assert entry["config"] == "jobs/configs/parle.toml" and entry["rounds"] == 60
    assert entry["overrides"] == [*p.fixed["parle"], *hp]
    assert entry["validation_accuracy"] == 0.9
    config = load_config(REPO / entry["config"], [*entry["overrides"], "model.arch=cnn1d",
                                                  f"train.rounds={entry['rounds']}"])  # fmt: skip
    a = config.algorithm
    assert config.train.rounds * a.coupling_period * a.inner_steps == p.steps["cnn1d"]
