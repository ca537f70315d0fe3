"""Which runs a comparison makes: one Job (one Ray task) per method, seed and phase.

Every run config is built (and so checked) before any run starts. All methods get the
same gradient evaluations per replica; the budget becomes rounds here, per method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from foundation.config import Config, load_config
from jobs import CONFIG_DIR
from jobs.compare.methods import ENTROPY, SWEPT, TRAINED
from jobs.compare.protocol import CompareError, Protocol, hp_label, kwargs_override

Choice = dict[tuple[str, str], tuple[str, ...]]
"""(model, swept method) → the hyperparameter overrides the sweep chose."""


@dataclass(frozen=True)
class Job:
    """One training run: one Ray task."""

    model: str
    method: str  # one of TRAINED
    seed: int
    phase: str  # "sweep" or "final"
    hp: tuple[str, ...]  # the chosen/tried overrides (hyperparameters only)
    config: Config = field(compare=False)

    @property
    def name(self) -> str:
        return self.config.run.name


def _rounds(method: str, steps: int, config: Config, factor: int = 1) -> int:
    """Rounds that spend exactly steps × factor gradient evaluations per replica.

    A round is K local steps, each of L inner steps for Entropy-SGD and Parle; a budget
    that is not a whole number of rounds would give that method fewer or more steps.
    """
    algo = config.algorithm
    per_round = algo.coupling_period * (algo.inner_steps if method in ENTROPY else 1)
    if steps * factor % per_round:
        raise CompareError(
            f"{config.run.name}: {steps} gradient evaluations per replica is not a whole "
            f"number of {method} rounds (K{' × L' if method in ENTROPY else ''} = {per_round})"
        )
    return steps * factor // per_round


def swept_as(method: str) -> str:
    """The swept method whose base config, fixed settings and choice a row uses."""
    return "sgd" if method == "sgd_long" else method


def base_config(p: Protocol, method: str) -> Path:
    """The method's base config: as given, relative to here, or among jobs/configs/."""
    path = Path(p.methods[swept_as(method)])
    return path if path.is_absolute() or path.exists() else CONFIG_DIR / path


def _run_name(model: str, method: str, seed: int, phase: str, hp: Sequence[str]) -> str:
    # A model may be an import path (pkg.module:Net): '.' and ':' are fine in a run name
    # (foundation.storage.name_problem), and an import path has no '/'.
    if phase == "final":
        return f"{model}-{method}-s{seed}"
    return f"sweep-{model}-{method}-{hp_label(hp)}"


def job_config(
    p: Protocol, model: str, method: str, seed: int, phase: str, hp: Sequence[str],
    steps: int, extra: Sequence[str] = (),
) -> Config:  # fmt: skip
    """The run config of one job: base config ← the method's fixed settings ← protocol
    (its `set`, the command line's --set) ← hyperparameters ← budget."""
    path = base_config(p, method)
    common = [
        f"data.dataset={p.dataset}", f"model.arch={model}", f"run.seed={seed}",
        f"run.name={_run_name(model, method, seed, phase, hp)}", f"run.storage={p.storage}",
        f"data.validation={p.validation if phase == 'sweep' else 0.0}",
        f"algorithm.replicas={1 if method == 'sgd_long' else p.replicas}",
        "train.checkpoint_every=0", "train.keep_checkpoints=1", "logging.wandb=false",
        *kwargs_override("data.kwargs", p.data_kwargs),
        *kwargs_override("model.kwargs", p.model_kwargs.get(model, {})),
    ]  # fmt: skip
    overrides = [*common, *p.fixed.get(swept_as(method), ()), *p.overrides, *extra, *hp]
    # The rounds depend on the final K and L, so the config is loaded once to read them.
    config = load_config(path, overrides)
    rounds = _rounds(method, steps, config, p.replicas if method == "sgd_long" else 1)
    return load_config(path, [*overrides, f"train.rounds={rounds}", f"train.eval_every={rounds}"])


def sweep_jobs(p: Protocol, steps: dict[str, int], extra: Sequence[str] = ()) -> list[Job]:
    """One job per model, swept method and tried value, all with the sweep's one seed."""
    jobs = []
    for model in p.models:
        for method in SWEPT:
            for hp in p.trials(model, method):
                cfg = job_config(p, model, method, p.sweep_seed, "sweep", hp, steps[model], extra)
                jobs.append(Job(model, method, p.sweep_seed, "sweep", tuple(hp), cfg))
    return jobs


def untuned(p: Protocol) -> Choice:
    """No hyperparameters for anything: final jobs built before the sweep, to check them."""
    return {(m, k): () for m in p.models for k in SWEPT}


def final_jobs(
    p: Protocol, steps: dict[str, int], seeds: int, chosen: Choice, extra: Sequence[str] = ()
) -> list[Job]:
    """One job per model, seed and trained method; sgd_long uses sgd's chosen values."""
    jobs = []
    for model in p.models:
        for seed in range(seeds):
            for method in TRAINED:
                hp = chosen[(model, swept_as(method))]
                cfg = job_config(p, model, method, seed, "final", hp, steps[model], extra)
                jobs.append(Job(model, method, seed, "final", hp, cfg))
    return jobs
