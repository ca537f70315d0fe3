"""Tier 1: config loading, overrides, validation messages and the shipped TOML files."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.config import Config, ConfigError, load_config, parse_value, to_toml
from jobs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate_and_round_trip_through_toml(tmp_path: Path) -> None:
    config = load_config(None, ["algorithm.replicas=3", "scoping.gamma0=auto"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(config))
    assert load_config(path) == config
    assert config.algorithm.replicas == 3 and config.scoping.gamma0 == "auto"


RUN_CONFIGS = sorted(
    p for p in CONFIG_DIR.glob("*.toml") if not p.name.startswith(("sweep_", "compare_"))
)  # sweep_* and compare_* files describe many runs; their own tests load them


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


def test_shipped_configs_cover_every_algorithm() -> None:
    kinds = {load_config(p).algorithm.kind for p in RUN_CONFIGS}
    assert kinds >= {"sgd", "rsgd", "esgd", "parle", "easgd"}


def test_set_values_are_read_as_toml() -> None:
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value('"x y"') == "x y" and parse_value("cosine") == "cosine"
    config = load_config(None, ["algorithm.lr=1", "scoping.kind=cosine", "algorithm.nesterov=true"])
    assert config.algorithm.lr == 1.0 and isinstance(config.algorithm.lr, float)
    assert config.scoping.kind == "cosine" and config.algorithm.nesterov is True
    named = load_config(None, ["run.name=nan", "run.storage='/tmp/a b'", "data.root=1e3"])
    assert (named.run.name, named.run.storage, named.data.root) == ("nan", "/tmp/a b", "1e3")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "algorithm.replica=3",
            "unknown config key 'algorithm.replica'; did you mean algorithm.replicas?",
        ),
        ("algorithm.lr=0", "algorithm.lr = 0.0 is out of range (0.0, 100.0]"),
        ("algorithm.replicas=0", "algorithm.replicas = 0 is out of range [1, 1024]"),
        (
            "algorithm.kind=adam",
            "algorithm.kind = 'adam' is not one of sgd, rsgd, esgd, parle, easgd",
        ),
        ("model.arch=vit", "model.arch = 'vit' is not one of mlp, cnn1d, smallconvnet, resnet18"),
        ("data.dataset=imagenet", "data.dataset = 'imagenet' is not one of"),
        ("train.rounds=1.5", "train.rounds must be a whole number, got 1.5"),
        ("algorithm.nesterov=1", "algorithm.nesterov must be true or false, got 1"),
        ("scoping.gamma0=lots", 'scoping.gamma0 must be a number >= 0 or "auto"'),
        ("scoping.gamma0=-1", "scoping.gamma0 = -1.0 is out of range [0, inf)"),
        ("scoping.gamma0=5", "scoping.gamma0 = 5.0 exceeds scoping.gamma_max = 1.0"),
        ("model.arch=resnet18", "needs images"),
        ("algorithm.momentum", "--set expects key=value"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_easgd_stability_rule() -> None:
    sets = [
        "algorithm.kind=easgd",
        "algorithm.lr=0.5",
        "scoping.gamma_max=1",
        "algorithm.replicas=4",
    ]
    with pytest.raises(ConfigError, match="easgd needs"):
        load_config(None, sets)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[algorithm\nkind = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[algoritm]\nkind = 'rsgd'\n")
    with pytest.raises(ConfigError, match="did you mean algorithm"):
        load_config(unknown)


def test_the_config_knows_every_built_in_part_by_name_without_importing_torch() -> None:
    from foundation import part_names as names
    from foundation.data import INPUT_SHAPES
    from foundation.models import build_model
    from foundation.parts import LOSSES, METRICS

    assert tuple(LOSSES) == names.LOSS_NAMES
    assert ("auto", "none", *METRICS) == names.METRIC_NAMES
    assert set(names.DATASETS) == set(INPUT_SHAPES)
    for arch in names.ARCHS:
        assert build_model(arch, (40,) if arch in ("mlp", "cnn1d") else (3, 32, 32), 10)
    # A fresh interpreter: loading and checking a config imports no torch.
    program = (
        "import sys, foundation.config as c; c.load_config(sys.argv[1], []); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", program, str(CONFIG_DIR / "default.toml")],
                          capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
    assert done.stdout.strip() == "False"


def test_the_configuration_reference_is_current_and_explains_every_key() -> None:
    """docs/config.md is written from the fields and their docstrings; an edit of either
    that is not written out fails here."""
    from foundation import config_reference

    undocumented = [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(type(getattr(Config(), section.name)))
        if (type(getattr(Config(), section.name)).__name__, f.name)
        not in config_reference.docstrings()
    ]
    assert undocumented == []
    assert config_reference.DOC.read_text() == config_reference.render(), (
        "docs/config.md is stale: run python -m foundation.config_reference"
    )
