"""Run configuration: kw_only dataclasses, loaded from TOML, overridden with --set a.b=v.

Every field carries its range in its metadata and a docstring naming its symbol; all
validation happens once, in load_config, and fails with one line that names the
field and what is allowed (ConfigError), before any actor starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from flatmath.scoping import SCHEDULES
from foundation.fields import (
    ConfigError,
    check_auto,
    check_range,
    coerce,
    component,
    knob,
    read_toml,
    toml_value,
)
from foundation.part_names import ARCHS, DATASETS, LOSS_NAMES, METRIC_NAMES, is_import_path
from foundation.storage import name_problem

ALGORITHMS: tuple[str, ...] = ("sgd", "rsgd", "esgd", "parle", "easgd", "diloco", "localsgd")
ENTROPY_ALGORITHMS: tuple[str, ...] = ("esgd", "parle")
UNCOUPLED_ALGORITHMS: tuple[str, ...] = ("sgd", "esgd")
"""y independent runs: their center is the mean of weights no step pulled together, a
model nobody trained, so they are judged by the mean of their replicas."""


@dataclass(kw_only=True)
class RunConfig:
    name: str = knob("default")
    """Run name; the run directory is <storage>/<name>."""
    storage: str = knob("runs")
    """Directory that holds run directories (created if missing)."""
    seed: int = knob(0, lo=0)
    """Base seed; replica a draws its init, data order and noise from (seed, a)."""


@dataclass(kw_only=True)
class DataConfig:
    dataset: str = component("mnist1d", DATASETS)
    """Data set: mnist1d (generated offline), mnist, fashion_mnist, cifar10 (downloaded
    once), or an import path `pkg.module:load` of a callable returning (train, test),
    each an (inputs, targets) pair of tensors or a map-style torch Dataset; it runs on
    the replicas' nodes (docs/your-model.md)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a user data callable (e.g. {length = 40})."""
    root: str = knob("data")
    """Cache directory for the Parquet shards (and raw downloads)."""
    batch_size: int = knob(100, lo=1, hi=65536)
    """Minibatch size |Ξ| per local step, per replica."""
    validation: float = knob(0.0, lo=0.0, hi=0.5)
    """Fraction of the training set held out; > 0 trains on the rest and reports the
    held-out part in place of the test set (for choosing hyperparameters)."""


@dataclass(kw_only=True)
class ModelConfig:
    arch: str = component("mlp", ARCHS)
    """Network: mlp, cnn1d, smallconvnet, resnet18 (foundation/models.py), or an import
    path `pkg.module:Net` of an nn.Module class or factory."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model's constructor or factory (e.g. {hidden = 64});
    input_shape and num_classes are passed too when it takes parameters of those names."""


@dataclass(kw_only=True)
class AlgorithmConfig:
    kind: str = knob("rsgd", choices=ALGORITHMS)
    """sgd (y independent replicas), rsgd, esgd, parle, easgd (synchronous), diloco or
    localsgd (docs/algorithms.md)."""
    replicas: int = knob(4, lo=1, hi=1024)
    """y, the number of replicas."""
    coupling_period: int = knob(10, lo=1, hi=1_000_000)
    """K, what one round holds: local SGD steps (sgd, rsgd, easgd, diloco, localsgd), or
    Entropy-SGD outer steps of L inner steps each (esgd, parle: a round then costs K × L
    gradient evaluations). Parle's original couples after every outer step: K = 1."""
    inner_steps: int = knob(20, lo=1, hi=10_000)
    """L, Entropy-SGD inner SGLD steps per outer step (esgd, parle; 20 in the eSGD paper's
    MNIST runs, 25 in ucla-vision/parle)."""
    lr: float = knob(0.1, lo=0.0, hi=100.0, open_lo=True)
    """η, the local learning rate (the outer-step rate for esgd/parle)."""
    momentum: float = knob(0.9, lo=0.0, hi=0.999)
    """Heavy-ball momentum of the local steps (outer steps for esgd/parle)."""
    nesterov: bool = knob(False)
    """Use Nesterov momentum."""
    weight_decay: float = knob(0.0, lo=0.0, hi=1.0)
    """λ, L2 weight decay added to the local gradient."""
    inner_lr: float = knob(0.1, lo=0.0, hi=100.0, open_lo=True)
    """η', Entropy-SGD's inner SGLD step size (0.1 in ucla-vision/entropy-sgd)."""
    inner_momentum: float = knob(0.9, lo=0.0, hi=0.999)
    """Momentum of the inner SGLD loop on the loss gradient, reset every outer step (0.9
    in every reference code: without it inner steps are ~10× smaller than SGD's)."""
    inner_nesterov: bool = knob(True)
    """Nesterov form of the inner momentum (the references' choice)."""
    outer_lr: float = knob(0.7, lo=0.0, hi=100.0, open_lo=True)
    """DiLoCo's outer learning rate on the pseudo-gradient θ − mean(θ_a) (0.7 in the
    DiLoCo paper); localsgd always averages (outer SGD with rate 1)."""
    outer_momentum: float = knob(0.9, lo=0.0, hi=0.999)
    """DiLoCo's outer Nesterov momentum (0.9 in the DiLoCo paper)."""
    noise: float = knob(1e-4, lo=0.0, hi=1.0)
    """ε, Entropy-SGD's SGLD noise scale (0 turns the inner loop into SGD)."""
    mu_alpha: float = knob(0.75, lo=0.0, hi=0.999)
    """α, Entropy-SGD's averaging of μ ← α μ + (1 − α) w'."""


@dataclass(kw_only=True)
class ScopingConfig:
    kind: str = knob("exponential", choices=SCHEDULES)
    """γ schedule: constant, exponential, linear or cosine (per round)."""
    gamma0: float | str = knob(0.01)
    """γ0 at round 0, or "auto" (measured after the first round)."""
    gamma1: float | str = knob("auto")
    """γ1, exponential growth per round, or "auto" (reach gamma_max at the last round)."""
    gamma_max: float = knob(1.0, lo=0.0)
    """γmax, the clip; the end of linear/cosine schedules."""
    rho0: float = knob(0.1, lo=0.0)
    """ρ0, Parle's pull toward the center (same schedule kind as γ)."""
    rho_max: float = knob(10.0, lo=0.0)
    """ρmax, Parle's clip for ρ (10 in the original)."""


@dataclass(kw_only=True)
class TrainConfig:
    rounds: int = knob(60, lo=1, hi=10_000_000)
    """Number of rounds; each is K local steps per replica."""
    eval_every: int = knob(10, lo=1)
    """E: evaluate center, replicas and ensemble every E rounds (and at the end)."""
    round_timeout_s: float = knob(600.0, lo=0.0, open_lo=True)
    """Seconds one round may take before the run fails with the slow replicas named."""
    bn_batches: int = knob(20, lo=1)
    """Training batches used to recompute the center's BatchNorm statistics."""
    checkpoint_every: int = knob(50, lo=0)
    """C: checkpoint every C rounds (and at the end); 0 = only at the end."""
    keep_checkpoints: int = knob(3, lo=1, hi=1000)
    """How many of the newest checkpoints to keep."""
    loss: str = component("cross_entropy", LOSS_NAMES)
    """Training loss (outputs, targets) -> scalar mean: cross_entropy, mse, or an import
    path `pkg.module:fn`."""
    metric: str = component("auto", METRIC_NAMES)
    """Reported metric (higher is better): accuracy, none, an import path
    `pkg.module:fn` of (outputs, targets) -> batch mean, or auto (accuracy with the
    cross_entropy loss, else none: the run reports its test loss)."""
    on_divergence: str = knob("stop", choices=("stop", "restart"))
    """NaN/inf: stop the run, or restart that replica from the center with its lr halved."""
    deterministic: bool = knob(True)
    """Deterministic kernels, so a resumed run ends bit-identical to an uninterrupted one."""


@dataclass(kw_only=True)
class ResourcesConfig:
    gpus_per_replica: float = knob(0.0, lo=0.0, hi=8.0)
    """GPUs reserved per replica (1 = one GPU each; fractions share a GPU)."""
    cpus_per_replica: float = knob(0.0, lo=0.0, hi=256.0)
    """CPUs reserved per replica; 0 = share the cluster's CPUs evenly (at most 1 each)."""
    replicas_per_actor: int = knob(0, lo=0, hi=1024)
    """p: replicas packed in one actor on one device, stepped together. 0 = auto: a single
    run on a one-node cluster with more replicas than CPUs packs them all into one actor
    holding every CPU when its model is one the batched kernels step (mlp, cnn1d); any
    other run keeps one replica per actor (cluster/resources.py, docs/performance.md)."""

    def per_actor(self) -> int:
        """p as the replica groups use it: auto (0) is one replica per actor until the
        driver resolves it for the cluster it runs on."""
        return self.replicas_per_actor or 1

    placement: str = knob("compact", choices=("compact", "spread"))
    """How the replicas' actors are placed over the nodes: compact (as few nodes as
    possible, Ray's PACK: the least traffic to the coordinator) or spread (as many as
    possible, Ray's SPREAD: a lost node costs fewer replicas)."""
    transport: str = knob("object_store", choices=("object_store", "collective"))
    """How the center is formed each round: object_store (every replica sends its weights
    to the coordinator, which sends the center back) or collective (the replicas
    all-reduce among themselves through ray.util.collective, gloo on CPU and NCCL on GPU;
    the coordinator receives scalars only). docs/scaling.md says where each wins."""
    restart_timeout_s: float = knob(300.0, lo=0.0, open_lo=True)
    """Seconds a lost replica may wait for room on the cluster before the run stops."""


@dataclass(kw_only=True)
class LoggingConfig:
    wandb: bool = knob(False)
    """Log progress and the summary to Weights & Biases (offline without an API key)."""
    wandb_project: str = knob("widevalley")
    """W&B project the runs (and sweep trials) are logged to."""


@dataclass(kw_only=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    scoping: ScopingConfig = field(default_factory=ScopingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _sections() -> dict[str, type]:
    return {s.name: type(getattr(Config(), s.name)) for s in fields(Config)}


def _keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in _sections().items() for f in fields(cls)]


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_value(raw: str) -> Any:
    """A --set value as TOML would read it (1, 0.5, true, "x"); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply(config: Config, key: str, value: Any, raw: str | None = None) -> None:
    """Set one key; `raw` is the --set text, kept as is for text-only fields (name=nan)."""
    section_name, _, name = key.partition(".")
    section = _sections().get(section_name)
    declared = {f.name: str(f.type) for f in fields(section)} if section else {}
    if name not in declared:
        raise _unknown(key)
    if raw is not None and declared[name] == "str":
        quoted = len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "\"'"
        value = raw[1:-1] if quoted else raw
    setattr(getattr(config, section_name), name, coerce(key, value, declared[name]))


def validate(config: Config) -> Config:
    for section_name in _sections():
        section = getattr(config, section_name)
        for f in fields(section):
            check_range(f"{section_name}.{f.name}", getattr(section, f.name), f.metadata)
    check_auto("scoping.gamma0", config.scoping.gamma0)
    check_auto("scoping.gamma1", config.scoping.gamma1)
    _check_combinations(config)
    return config


def _check_combinations(config: Config) -> None:
    """Rules that involve more than one field (and the run name's shape)."""
    algo, scoping = config.algorithm, config.scoping
    problem = name_problem(config.run.name)
    if problem is not None:
        raise ConfigError(
            f"run.name = {config.run.name!r} {problem}: it must be a plain name, "
            "since the run directory is <run.storage>/<run.name>"
        )
    if isinstance(scoping.gamma0, float) and scoping.gamma0 > scoping.gamma_max:
        raise ConfigError(
            f"scoping.gamma0 = {scoping.gamma0} exceeds scoping.gamma_max = {scoping.gamma_max}"
        )
    if algo.kind == "easgd" and algo.lr * scoping.gamma_max * algo.replicas > 1.0:
        # The center update w̃ ← (1 − yα) w̃ + α Σ w^a is a convex combination only for yα ≤ 1.
        raise ConfigError(
            "easgd needs algorithm.lr × scoping.gamma_max × algorithm.replicas <= 1 "
            f"(α = ηρ, β = yα), got {algo.lr * scoping.gamma_max * algo.replicas:.3g}"
        )
    if algo.kind == "parle" and algo.lr * scoping.rho_max > 1.0:
        # w ← w − η ρ (w − w̄) alone jumps past the center when η ρ > 1, and diverges.
        raise ConfigError(
            "parle needs algorithm.lr × scoping.rho_max <= 1 "
            f"(the center pull overshoots), got {algo.lr * scoping.rho_max:.3g}"
        )
    if config.data.dataset == "mnist1d" and config.model.arch in ("smallconvnet", "resnet18"):
        raise ConfigError(
            f"model.arch = {config.model.arch} needs images; use mlp or cnn1d for mnist1d"
        )


def _flatten(table: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in table.items():
        if not isinstance(values, dict):
            raise _unknown(section)
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← TOML file ← --set overrides, then validate once."""
    table = read_toml(Path(path)) if path is not None else {}
    return config_from_table(table, overrides)


def config_from_text(text: str, overrides: list[str] | None = None) -> Config:
    """A Config from TOML text (to_toml's output, a run directory's config.toml)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config text is not valid TOML: {err}") from None
    return config_from_table(table, overrides)


def config_from_table(table: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Defaults ← a parsed TOML table ← --set overrides, then validate once."""
    config = Config()
    for key, value in _flatten(table).items():
        _apply(config, key, value)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        _apply(config, key.strip(), parse_value(raw.strip()), raw.strip())
    return validate(config)


def check_batch_size(config: Config, train_examples: int) -> None:
    """A minibatch cannot be larger than the training set it is drawn from."""
    if config.data.batch_size > train_examples:
        raise ConfigError(
            f"data.batch_size = {config.data.batch_size} exceeds the {train_examples} "
            f"training examples of {config.data.dataset}"
        )


def names_user_code(config: Config) -> bool:
    """Whether the model, data, loss or metric is user code (an import path)."""
    names = (config.model.arch, config.data.dataset, config.train.loss, config.train.metric)
    return any(is_import_path(n) for n in names)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def to_toml(config: Config) -> str:
    """The resolved config as TOML that load_config reads back to an equal Config."""
    lines: list[str] = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
