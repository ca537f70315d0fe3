"""Tier 1: the sweep file — space distributions, messages for bad input, resources, outputs."""

from pathlib import Path

import pytest

from cluster.resources import ResourceError
from foundation.config import load_config
from jobs import CONFIG_DIR
from jobs.sweep.resources import concurrency, trial_bundles, with_gpus
from jobs.sweep.results import best_toml, table_text
from jobs.sweep.space import Distribution, SweepError, parse_distribution
from jobs.sweep.sweepfile import load_sweep
from jobs.sweep.trial import trial_config

BASE = load_config(CONFIG_DIR / "smoke.toml")


def sweep_file(tmp_path: Path, space: str, sweep: str = "", extra: str = "") -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'base = "smoke.toml"\n{extra}\n[sweep]\n{sweep}\n[sweep.space]\n{space}\n')
    return path


@pytest.mark.parametrize(
    ("spec", "kind", "values"),
    [
        ({"loguniform": [0.01, 0.3]}, "loguniform", (0.01, 0.3)),
        ({"uniform": [0, 1]}, "uniform", (0.0, 1.0)),
        ({"grid": [0.001, 0.01, 0.1]}, "grid", (0.001, 0.01, 0.1)),
        ({"choice": ["auto", 0.01]}, "choice", ("auto", 0.01)),
    ],
)
def test_each_distribution_parses(
    spec: dict[str, list[object]], kind: str, values: tuple[object, ...]
) -> None:
    key = "scoping.gamma0" if kind in ("grid", "choice", "uniform") else "algorithm.lr"
    d = parse_distribution(key, spec, BASE)
    assert d == Distribution(kind, values)


def test_distributions_become_tune_domains_and_pbt_mutations() -> None:
    from ray.tune.search.sample import Categorical, Float

    log = Distribution("loguniform", (0.01, 0.3))
    assert isinstance(log.for_tune(), Float) and isinstance(log.for_pbt(), Float)
    assert 0.01 <= log.for_tune().sample() <= 0.3
    grid = Distribution("grid", (1, 2, 3))
    assert grid.for_tune() == {"grid_search": [1, 2, 3]} and grid.for_pbt() == [1, 2, 3]
    assert isinstance(Distribution("choice", ("a", "b")).for_tune(), Categorical)
    # PBT's × 1.2 / × 0.8 stays inside the declared range.
    assert log.clip(0.36) == 0.3 and log.clip(0.005) == 0.01 and log.clip(0.1) == 0.1
    assert grid.clip(7) == 7


@pytest.mark.parametrize(
    ("key", "spec", "message"),
    [
        ("algorithm.lrr", {"loguniform": [0.01, 0.3]},
         "unknown config key in sweep.space 'algorithm.lrr'; did you mean algorithm.lr?"),
        ("scoping.gama0", {"grid": [0.1]},
         "unknown config key in sweep.space 'scoping.gama0'; did you mean scoping.gamma0?"),
        ("algorithm.lr", {"loguniform": [0.3, 0.01]},
         'sweep.space."algorithm.lr": loguniform needs low < high, got [0.3, 0.01]'),
        ("algorithm.lr", {"loguniform": [0, 0.3]},
         'sweep.space."algorithm.lr": loguniform needs low > 0, got [0, 0.3]'),
        ("algorithm.lr", {"uniform": [0.1]},
         'sweep.space."algorithm.lr": uniform needs two numbers [low, high], got [0.1]'),
        ("algorithm.lr", {"loguniform": [0.01, 300]},
         'sweep.space."algorithm.lr": algorithm.lr = 300.0 is out of range (0.0, 100.0]'),
        ("algorithm.lr", {"normal": [0, 1]},
         'sweep.space."algorithm.lr" must be one of {grid = [...]}, {choice = [...]}, '
         "{uniform = [a, b]} or {loguniform = [a, b]}, got {'normal': [0, 1]}"),
        ("algorithm.lr", 0.1, 'sweep.space."algorithm.lr" must be one of'),
        ("algorithm.lr", {"grid": []}, 'sweep.space."algorithm.lr": grid needs a non-empty list'),
        ("algorithm.replicas", {"uniform": [2, 8]},
         'sweep.space."algorithm.replicas": algorithm.replicas takes whole numbers or text: '
         "use grid or choice"),
        ("algorithm.replicas", {"grid": [2, 0]},
         'sweep.space."algorithm.replicas": algorithm.replicas = 0 is out of range [1, 1024]'),
        ("scoping.kind", {"choice": ["exponential", "sigmoid"]},
         'sweep.space."scoping.kind": scoping.kind = \'sigmoid\' is not one of'),
        ("scoping.gamma0", {"grid": [0.1, 2.0]},
         'sweep.space."scoping.gamma0": scoping.gamma0 = 2.0 exceeds scoping.gamma_max = 1.0'),
        ("run.name", {"grid": ["a", "b"]},
         'sweep.space."run.name": run.name is set by the sweep for each trial'),
    ],
)  # fmt: skip
def test_bad_space_entries_fail_in_one_line(key: str, spec: object, message: str) -> None:
    with pytest.raises(SweepError) as err:
        parse_distribution(key, spec, BASE)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_sweep_file_loads_with_its_base_inline_sections_and_overrides(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        '"algorithm.lr" = {loguniform = [0.01, 0.3]}\n"scoping.kind" = {grid = ["cosine"]}',
        'scheduler = "asha"\nnum_samples = 3\n[sweep.asha]\ngrace_period = 5',
        "[train]\nrounds = 30",
    )
    sweep = load_sweep(path, ["algorithm.replicas=3", "sweep.num_samples=5",
                              "sweep.space.scoping.gamma0={grid=[0.001, 0.1]}"])  # fmt: skip
    assert sweep.base.run.name == "smoke" and sweep.base.train.rounds == 30
    assert sweep.base.algorithm.replicas == 3
    assert sweep.sweep.scheduler == "asha" and sweep.sweep.num_samples == 5
    assert sweep.sweep.asha.grace_period == 5 and sweep.sweep.direction == "max"
    assert list(sweep.space) == ["algorithm.lr", "scoping.kind", "scoping.gamma0"]
    assert sweep.space["scoping.gamma0"] == Distribution("grid", (0.001, 0.1))
    assert sweep.uri.endswith("/runs/sweep")


@pytest.mark.parametrize(
    ("sweep", "extra", "overrides", "message"),
    [
        ("num_sample = 3", "", [],
         "unknown sweep key 'sweep.num_sample'; did you mean sweep.num_samples?"),
        ('scheduler = "hyperband"', "", [],
         "sweep.scheduler = 'hyperband' is not one of fifo, asha, pbt"),
        ("num_samples = 0", "", [], "sweep.num_samples = 0 is out of range [1, 100000]"),
        ("num_samples = 1.5", "", [], "sweep.num_samples must be a whole number, got 1.5"),
        ('metric = "accuracy"', "", [], "sweep.metric = 'accuracy' is not one of"),
        ("[sweep.pbt]\nquantile_fraction = 0.9", "", [],
         "sweep.pbt.quantile_fraction = 0.9 is out of range"),
        ('scheduler = "pbt"', "", ["sweep.space.algorithm.lr"], "--set expects key=value"),
        ("", "[trian]\nrounds = 3", [],
         "unknown config key 'trian.rounds'; did you mean train.rounds?"),
        ("", "", ["algorithm.replicas=0"], "algorithm.replicas = 0 is out of range [1, 1024]"),
    ],
)  # fmt: skip
def test_bad_sweep_options_fail_in_one_line(
    tmp_path: Path, sweep: str, extra: str, overrides: list[str], message: str
) -> None:
    path = sweep_file(tmp_path, '"scoping.kind" = {grid = ["cosine", "linear"]}', sweep, extra)
    with pytest.raises(Exception) as err:
        load_sweep(path, overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_pbt_needs_a_key_it_can_perturb_and_a_run_config_is_not_a_sweep(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, '"scoping.kind" = {grid = ["cosine"]}', 'scheduler = "pbt"')
    with pytest.raises(SweepError, match=r"pbt perturbs algorithm.lr or scoping.gamma0"):
        load_sweep(path)
    with pytest.raises(SweepError, match=r"has no \[sweep\] table"):
        load_sweep(CONFIG_DIR / "smoke.toml")
    with pytest.raises(SweepError, match=r"sweep.space is empty"):
        load_sweep(sweep_file(tmp_path, ""))


def test_shipped_sweep_files_load() -> None:
    files = sorted(CONFIG_DIR.glob("sweep_*.toml"))
    assert {p.name for p in files} >= {"sweep_rsgd.toml", "sweep_smoke.toml", "sweep_pbt.toml"}
    for path in files:
        sweep = load_sweep(path)
        assert sweep.space and sweep.sweep.name.startswith("sweep")


def test_a_trial_reserves_its_coordinator_and_replicas_and_concurrency_is_what_fits() -> None:
    sweep = load_sweep(CONFIG_DIR / "sweep_smoke.toml")
    cpus = {"CPU": 2.0}
    bundles = trial_bundles(sweep, cpus)
    assert bundles == [{"CPU": 0.5}, {"CPU": 0.25}, {"CPU": 0.25}]
    assert concurrency(sweep, bundles, cpus) == 2
    assert concurrency(sweep, bundles, {"CPU": 16.0}) == 16
    with pytest.raises(
        ResourceError, match=r"one trial needs CPU 1, GPU 0; the cluster has CPU 0.5,"
    ):
        concurrency(sweep, bundles, {"CPU": 0.5})
    # On a GPU cluster every replica gets a GPU: y GPUs per trial.
    gpus = {"CPU": 16.0, "GPU": 4.0}
    on_gpus = with_gpus(sweep, gpus)
    assert on_gpus.base.resources.gpus_per_replica == 1.0
    assert trial_bundles(on_gpus, gpus)[1:] == [{"CPU": 0.25, "GPU": 1.0}] * 2
    assert concurrency(on_gpus, trial_bundles(on_gpus, gpus), gpus) == 2
    assert with_gpus(sweep, cpus).base.resources.gpus_per_replica == 0.0


def test_trial_configs_and_best_toml_are_ordinary_run_configs(tmp_path: Path) -> None:
    from jobs.sweep.space import flat
    from jobs.sweep.trial import Plan

    sweep = load_sweep(CONFIG_DIR / "sweep_smoke.toml")
    plan = Plan(base=flat(sweep.base), space=sweep.space, runs=str(tmp_path / "runs"),
                sweep_name="s", pbt=False, allow_changes=(), inprocess=False)  # fmt: skip
    config = trial_config(plan, {"algorithm.lr": 0.5, "scoping.kind": "cosine"}, "abc_00001")
    assert config.algorithm.lr == 0.3  # clipped into the declared range
    assert (config.run.name, config.run.storage) == ("abc_00001", str(tmp_path / "runs"))
    row = {"trial": "abc_00001", "scoping.gamma0": 0.1, "scoping.kind": "cosine",
           "algorithm.lr": 0.05, "status": "finished", "round": 12,
           "center_test_accuracy": 0.5, "mean_loss": 1.0, "mean_distance": 0.5,
           "run_dir": "x"}  # fmt: skip
    path = tmp_path / "best.toml"
    path.write_text(best_toml(sweep, row))
    best = load_config(path)
    assert (best.algorithm.lr, best.scoping.gamma0, best.scoping.kind) == (0.05, 0.1, "cosine")
    assert best.run.name == "sweep-smoke-best" and best.train.rounds == 12
    # Chosen on the held-out validation split; the run it describes reports the test set.
    assert sweep.base.data.validation == 0.1 and best.data.validation == 0.0
    assert "(data.validation); this run trains on all of it" in path.read_text()
    text = table_text(sweep, [row])
    head = text.splitlines()[0].split()
    assert head[:4] == ["trial", "scoping.gamma0", "scoping.kind", "algorithm.lr"]
    assert "abc_00001" in text and "0.5" in text


def test_a_sweep_directory_resumes_only_the_same_sweep(tmp_path: Path) -> None:
    import json

    from coordinator.resume import ResumeMismatch
    from jobs.sweep.tuner import check_same_sweep, fingerprint

    sweep = load_sweep(CONFIG_DIR / "sweep_smoke.toml", [f"run.storage={tmp_path}"])
    Path(sweep.uri).mkdir(parents=True)
    (Path(sweep.uri) / "sweep.json").write_text(json.dumps(fingerprint(sweep)))
    check_same_sweep(sweep)
    storage = f"run.storage={tmp_path}"
    check_same_sweep(load_sweep(CONFIG_DIR / "sweep_smoke.toml", [storage, "sweep.seed=0"]))
    changes = [
        ("sweep.num_samples=2", "sweep.num_samples"),
        ("algorithm.momentum=0.5", "algorithm.momentum"),
        ("sweep.space.algorithm.lr={grid=[0.1]}", "sweep.space.algorithm.lr"),
    ]
    for change, name in changes:
        other = load_sweep(CONFIG_DIR / "sweep_smoke.toml", [storage, change])
        with pytest.raises(ResumeMismatch, match=rf"holds a sweep with {name} = .*--fresh"):
            check_same_sweep(other)
