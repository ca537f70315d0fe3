"""`python -m jobs.compare --config jobs/configs/compare_mnist1d.toml`: the reproduction table.

For every model and seed: SGD (the sgd config's y independent replicas, mean single
replica), SGD with y× the steps (one replica), the output ensemble of the y SGD runs,
the rSGD center, Entropy-SGD (y independent replicas, mean single replica, L inner
steps counted as gradient evaluations), the Parle center and the EASGD center, all at
the same gradient evaluations per replica. Hyperparameters are chosen first by a small
sweep on a validation split carved from the training set (one seed), never on test.

Each (model, method, seed, hyperparameter) run is one Ray task with num_cpus = 1 that
steps a Coordinator with LocalGroup in-process and then measures flatness from the run
directory's final checkpoint; every task does y × steps gradient evaluations on one CPU,
so all methods get the same compute. The driver builds the table only from what the run
directories hold (summary.json and the compare.json the task writes beside it), and
writes <output>/RESULTS.md, <output>/results/compare.parquet (one row per table entry
and seed, with its run directory), sweep.parquet and plots.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from foundation.config import Config, ConfigError, config_from_text, load_config, to_toml
from foundation.fields import read_toml
from jobs import CONFIG_DIR

METHODS: tuple[str, ...] = ("sgd", "sgd_long", "ensemble", "rsgd", "esgd", "parle", "easgd")
"""Table rows, in order; sgd, sgd_long and ensemble are the budget-matched baselines."""
LABELS: dict[str, str] = {
    "sgd": "SGD",
    "sgd_long": "SGD, y× steps",
    "ensemble": "ensemble of y SGD",
    "rsgd": "rSGD center",
    "esgd": "eSGD",
    "parle": "Parle center",
    "easgd": "EASGD center",
}
BASELINES: tuple[str, ...] = ("sgd", "sgd_long", "ensemble")
CONTENDERS: tuple[str, ...] = ("rsgd", "esgd", "parle", "easgd")
TRAINED: tuple[str, ...] = ("sgd", "sgd_long", "rsgd", "esgd", "parle", "easgd")
"""Methods that are one training run each (the ensemble reuses the sgd run)."""
SWEPT: tuple[str, ...] = ("sgd", "rsgd", "esgd", "parle", "easgd")
ENTROPY: tuple[str, ...] = ("esgd", "parle")
# How a row reads its model from the run: the mean single replica, or the center.
REPLICA_ROWS: tuple[str, ...] = ("sgd", "sgd_long", "esgd")
MEASURES_FILE = "compare.json"


class CompareError(ConfigError):
    """Bad comparison input, said in one line."""


# ------------------------------------------------------------------ the protocol


@dataclass(frozen=True, kw_only=True)
class FlatnessSpec:
    subset: int = 1000
    draws: int = 20
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    table_sigmas: tuple[float, float] = (0.1, 0.3)
    lanczos_steps: int = 30


@dataclass(frozen=True, kw_only=True)
class Protocol:
    dataset: str
    models: tuple[str, ...]
    seeds: int
    replicas: int
    storage: str
    output: str
    validation: float
    sweep_seed: int
    steps: dict[str, int]
    methods: dict[str, str]
    sweep: dict[str, list[list[str]]]
    flatness: FlatnessSpec
    overrides: tuple[str, ...] = ()
    quick_seeds: int = 2
    quick_steps: int = 400
    source: str = ""


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise CompareError(f"{what} must be a list, got {value!r}")
    return value


def load_protocol(path: str | Path) -> Protocol:
    raw = read_toml(Path(path), "comparison config", CompareError)
    c, fl = raw.get("compare", {}), raw.get("flatness", {})
    methods = {str(k): str(v) for k, v in raw.get("methods", {}).items()}
    missing = [m for m in SWEPT if m not in methods]
    if missing:
        raise CompareError(f"[methods] must name a base config for {', '.join(missing)}")
    sweep = {
        str(m): [[str(s) for s in _list(o, f"sweep.{m} entry")] for o in _list(v, f"sweep.{m}")]
        for m, v in raw.get("sweep", {}).items()
    }
    models = tuple(str(m) for m in _list(c.get("models", []), "compare.models"))
    steps = {str(k): int(v) for k, v in c.get("steps", {}).items()}
    if not models or any(m not in steps for m in models):
        raise CompareError("compare.models must be non-empty and each needs compare.steps.<model>")
    sigmas = tuple(float(s) for s in fl.get("sigmas", FlatnessSpec.sigmas))
    table_sigmas = tuple(float(s) for s in fl.get("table_sigmas", FlatnessSpec.table_sigmas))
    if len(table_sigmas) != 2 or any(s not in sigmas for s in table_sigmas):
        raise CompareError(f"flatness.table_sigmas must be two of flatness.sigmas {list(sigmas)}")
    return Protocol(
        dataset=str(c.get("dataset", "mnist1d")),
        models=models,
        seeds=int(c.get("seeds", 5)),
        replicas=int(c.get("replicas", 4)),
        storage=str(c.get("storage", "runs/compare")),
        output=str(c.get("output", "docs")),
        validation=float(c.get("validation", 0.2)),
        sweep_seed=int(c.get("sweep_seed", 100)),
        steps=steps,
        methods=methods,
        sweep=sweep,
        flatness=FlatnessSpec(
            subset=int(fl.get("subset", 1000)),
            draws=int(fl.get("draws", 20)),
            sigmas=sigmas,
            table_sigmas=(table_sigmas[0], table_sigmas[1]),
            lanczos_steps=int(fl.get("lanczos_steps", 30)),
        ),
        overrides=tuple(str(s) for s in _list(c.get("set", []), "compare.set")),
        quick_seeds=int(c.get("quick_seeds", 2)),
        quick_steps=int(c.get("quick_steps", 400)),
        source=str(path),
    )


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


def hp_label(hp: Sequence[str]) -> str:
    """scoping.gamma0=0.01 → gamma0=0.01 (the key's last part), joined by commas."""
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (o.partition("=") for o in hp))


def _rounds(method: str, steps: int, config: Config, factor: int = 1) -> int:
    algo = config.algorithm
    per_round = algo.coupling_period * (algo.inner_steps if method in ENTROPY else 1)
    if steps * factor % per_round:
        raise CompareError(
            f"{steps} gradient evaluations per replica is not a whole number of {method} rounds "
            f"(K{' × L' if method in ENTROPY else ''} = {per_round})"
        )
    return steps * factor // per_round


def job_config(
    p: Protocol, model: str, method: str, seed: int, phase: str, hp: Sequence[str],
    steps: int, extra: Sequence[str] = (),
) -> Config:  # fmt: skip
    """The run config of one job: base config ← protocol ← hyperparameters ← budget."""
    base = "sgd" if method == "sgd_long" else method
    path = Path(p.methods[base])
    path = path if path.is_absolute() or path.exists() else CONFIG_DIR / path
    name = (
        f"{model}-{method}-s{seed}"
        if phase == "final"
        else f"sweep-{model}-{method}-{hp_label(hp)}"
    )
    common = [
        f"data.dataset={p.dataset}", f"model.arch={model}", f"run.seed={seed}",
        f"run.name={name}", f"run.storage={p.storage}",
        f"data.validation={p.validation if phase == 'sweep' else 0.0}",
        f"algorithm.replicas={1 if method == 'sgd_long' else p.replicas}",
        "train.checkpoint_every=0", "train.keep_checkpoints=1", "logging.wandb=false",
    ]  # fmt: skip
    config = load_config(path, [*common, *p.overrides, *extra, *hp])
    rounds = _rounds(method, steps, config, p.replicas if method == "sgd_long" else 1)
    return load_config(
        path, [*common, *p.overrides, *extra, *hp, f"train.rounds={rounds}",
               f"train.eval_every={rounds}"]
    )  # fmt: skip


def sweep_jobs(p: Protocol, steps: dict[str, int], extra: Sequence[str] = ()) -> list[Job]:
    jobs = []
    for model in p.models:
        for method in SWEPT:
            for hp in p.sweep.get(method, [[]]):
                cfg = job_config(p, model, method, p.sweep_seed, "sweep", hp, steps[model], extra)
                jobs.append(Job(model, method, p.sweep_seed, "sweep", tuple(hp), cfg))
    return jobs


def final_jobs(
    p: Protocol, steps: dict[str, int], seeds: int, chosen: dict[tuple[str, str], tuple[str, ...]],
    extra: Sequence[str] = (),
) -> list[Job]:  # fmt: skip
    jobs = []
    for model in p.models:
        for seed in range(seeds):
            for method in TRAINED:
                hp = chosen[(model, "sgd" if method == "sgd_long" else method)]
                cfg = job_config(p, model, method, seed, "final", hp, steps[model], extra)
                jobs.append(Job(model, method, seed, "final", hp, cfg))
    return jobs


# ------------------------------------------------------------------ one run (a Ray task)


def _model_from(config: Config, vector: Any, data: Any, center: bool) -> Any:
    import torch

    from flatmath.flat import unflatten_state_
    from foundation.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten below
        model = build_model(config.model.arch, data.input_shape, data.num_classes)
    unflatten_state_(model, torch.as_tensor(vector).clone())
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if center and has_bn:  # as replicas/replica.py _recompute_batchnorm does
        batch = config.data.batch_size
        count = min(config.train.bn_batches * batch, len(data.train.x))
        batches = [data.train.x[i : i + batch] for i in range(0, count, batch)]
        torch.optim.swa_utils.update_bn(batches, model)
    return model.eval()


def measure_models(config: Config, run_dir: Any, flat: FlatnessSpec, method: str) -> dict[str, Any]:
    """Flatness of the run's reported model(s), and the ensemble's train accuracy."""
    import torch

    from coordinator import checkpoint
    from foundation.data import load_dataset
    from landscape import hessian_top_eigenvalues, local_energy
    from replicas.replica import EVAL_TRAIN_SAMPLES, held_out

    found = checkpoint.load_latest(run_dir)
    if found is None:
        raise RuntimeError(f"{run_dir.path} has no checkpoint")
    _, state = found
    data = held_out(load_dataset(config.data.dataset, config.data.root), config.data.validation)
    n = min(flat.subset, len(data.train.y))
    x, y = data.train.x[:n], data.train.y[:n]
    if method in REPLICA_ROWS:
        vectors = [(r["flat"], False) for r in state["replicas"]]
    else:
        vectors = [(state["center"], True)]
    per_model: list[dict[str, Any]] = []
    for vector, is_center in vectors:
        model = _model_from(config, vector, data, is_center)
        energy = local_energy(
            model, x, y, flat.sigmas, noise="multiplicative", num_samples=flat.draws, seed=0
        )
        eig = hessian_top_eigenvalues(model, x, y, k=1, max_steps=flat.lanczos_steps, seed=0)
        per_model.append({
            "loss_delta": [float(v) for v in energy.loss_delta],
            "loss_delta_se": [float(v) for v in energy.loss_delta_se],
            "lambda_max": float(eig.values[0]),
            "lambda_residual": float(eig.residuals[0]),
        })  # fmt: skip
    out: dict[str, Any] = {
        "sigmas": list(flat.sigmas),
        "noise": "multiplicative",
        "subset": n,
        "draws": flat.draws,
        "models": "replicas" if method in REPLICA_ROWS else "center",
        "per_model": per_model,
        "loss_delta": np.mean([m["loss_delta"] for m in per_model], axis=0).tolist(),
        "lambda_max": float(np.mean([m["lambda_max"] for m in per_model])),
    }
    if method == "sgd":  # the output ensemble's train accuracy, on the summary's train prefix
        xt, yt = data.train.x[:EVAL_TRAIN_SAMPLES], data.train.y[:EVAL_TRAIN_SAMPLES]
        with torch.no_grad():
            probs = torch.stack([
                _model_from(config, r["flat"], data, False)(xt).softmax(1)
                for r in state["replicas"]
            ]).mean(0)  # fmt: skip
        out["ensemble_train_accuracy"] = float((probs.argmax(1) == yt).float().mean())
    return out


def run_job(config_toml: str, method: str, phase: str, flat: FlatnessSpec) -> dict[str, Any]:
    """Train one run in this process (LocalGroup), then measure it; returns its run dir.

    A run directory that already holds a finished run of this exact config (and its
    measurements) is reused, so an interrupted comparison picks up where it stopped.
    """
    import torch

    torch.set_num_threads(1)
    from coordinator.coordinator import Coordinator
    from coordinator.groups import LocalGroup
    from coordinator.rundir import RunDir

    config = config_from_text(config_toml)
    run = RunDir(config.run.storage, config.run.name)
    done = (
        run.exists("summary.json")
        and run.exists("config.toml")
        and run.read_bytes("config.toml").decode() == to_toml(config)
        and (phase == "sweep" or run.exists(MEASURES_FILE))
    )
    if not done:
        started = time.time()
        coordinator = Coordinator(config, LocalGroup, fresh=True)
        while not coordinator.done:
            coordinator.step()
        coordinator.finish()
        coordinator.shutdown()
        if phase == "final":
            measured = measure_models(config, run, flat, method)
            measured["task_seconds"] = time.time() - started
            run.write_json(MEASURES_FILE, measured)
    return {"run_dir": run.path, "storage": config.run.storage, "name": config.run.name,
            "reused": done}  # fmt: skip


# ------------------------------------------------------------------ rows from run dirs


def _read_json(storage: str, name: str, file: str) -> dict[str, Any]:
    from coordinator.rundir import RunDir

    value: dict[str, Any] = RunDir(storage, name).read_json(file)
    return value


def row_of(job: Job, method: str, storage: str, sigmas: tuple[float, float]) -> dict[str, Any]:
    """One table entry of one seed, read back from the run directory only."""
    name = job.name
    s = _read_json(storage, name, "summary.json")
    m = _read_json(storage, name, MEASURES_FILE) if job.phase == "final" else None
    if method in REPLICA_ROWS:
        test = float(np.mean(s["replica_test_accuracy"]))
        train = float(np.mean(s["replica_train_accuracy"]))
    elif method == "ensemble":
        test = float(s["ensemble_test_accuracy"])
        train = float(m["ensemble_train_accuracy"]) if m else math.nan
    else:
        test, train = float(s["center_test_accuracy"]), float(s["center_train_accuracy"])
    row: dict[str, Any] = {
        "model": job.model, "method": method, "label": LABELS[method], "seed": job.seed,
        "phase": job.phase, "hyperparameters": " ".join(job.hp),
        "test_accuracy": test, "train_accuracy": train, "gap": train - test,
        "wall_seconds": float(s["wall_seconds"]),
        "gradient_evaluations_per_replica": int(s["gradient_evaluations_per_replica"]),
        "replicas": int(s["replicas"]),
        "run_dir": f"{storage.rstrip('/')}/{name}", "summary_sha256": s["center_sha256"],
    }  # fmt: skip
    flat_here = m is not None and method != "ensemble"
    grid = m["sigmas"] if m else []
    for k, sigma in enumerate(sigmas):
        value = m["loss_delta"][grid.index(sigma)] if flat_here and m else math.nan
        row[f"dE_{k}"] = value
    row["lambda_max"] = float(m["lambda_max"]) if flat_here and m else math.nan
    row["dE_curve"] = list(m["loss_delta"]) if flat_here and m else []
    row["sigmas"] = list(grid) if flat_here else []
    return row


def rows_of(jobs: list[Job], storage: str, sigmas: tuple[float, float]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        rows.append(row_of(job, job.method, storage, sigmas))
        if job.method == "sgd" and job.phase == "final":
            rows.append(row_of(job, "ensemble", storage, sigmas))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["model"], order[r["method"]], r["seed"]))


# ------------------------------------------------------------------ aggregation, wording


COLUMNS: tuple[str, ...] = (
    "test_accuracy", "train_accuracy", "gap", "dE_0", "dE_1", "lambda_max", "wall_seconds",
)  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof = 1) of the finite values; nan where there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v)


def aggregate(
    rows: list[dict[str, Any]],
) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(model, method) → column → (mean, std, n) over seeds."""
    out: dict[tuple[str, str], dict[str, tuple[float, float, int]]] = {}
    keys = sorted(
        {(r["model"], r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1]))
    )
    for key in keys:
        mine = [r for r in rows if (r["model"], r["method"]) == key]
        out[key] = {c: mean_std([r[c] for r in mine]) for c in COLUMNS}
    return out


def verdict(a: tuple[float, float, int], b: tuple[float, float, int]) -> str:
    """a against b: "beat", "lost" or "no clear difference" (|Δ| below the seeds' spread).

    The spread is the larger of the two sample standard deviations; with fewer than two
    seeds on either side there is no spread to judge by, so no difference is clear.
    """
    (ma, sa, na), (mb, sb, nb) = a, b
    if na < 2 or nb < 2 or not all(math.isfinite(v) for v in (ma, mb, sa, sb)):
        return "no clear difference"
    if abs(ma - mb) <= max(sa, sb):
        return "no clear difference"
    return "beat" if ma > mb else "lost"


SPEARMAN_5PCT: dict[int, float] = {5: 1.0, 6: 0.886, 7: 0.786, 8: 0.738, 9: 0.700, 10: 0.648}
"""Two-sided 5 % critical values of Spearman's ρ for n pairs (exact tables)."""


def spearman_critical(n: int) -> float:
    """|ρ| needed for significance at 5 % (two-sided); 1 (never below) for n < 5."""
    if n < 5:
        return 1.0
    return SPEARMAN_5PCT.get(n, 1.96 / math.sqrt(n - 1))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan with < 3 pairs."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan

    def ranks(v: Sequence[float]) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in set(v):  # ties share their average rank
            idx = [i for i, w in enumerate(v) if w == value]
            r[idx] = r[idx].mean()
        return r

    rx, ry = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def fmt(cell: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = cell
    if n == 0:
        return "—"
    if not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_sci(cell: tuple[float, float, int]) -> str:
    mean, std, n = cell
    if n == 0:
        return "—"
    return f"{mean:.3g}" if not math.isfinite(std) else f"{mean:.3g} ± {std:.2g}"


def table_lines(
    agg: dict[tuple[str, str], dict[str, tuple[float, float, int]]], model: str,
    sigmas: tuple[float, float],
) -> list[str]:  # fmt: skip
    head = (
        f"| method | test acc | train acc | gap (train − test) | δE(σ={sigmas[0]:g}) | "
        f"δE(σ={sigmas[1]:g}) | λ_max | wall s | seeds |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        cells = agg.get((model, method))
        if cells is None:
            continue
        lines.append(
            f"| {LABELS[method]} | {fmt(cells['test_accuracy'])} | {fmt(cells['train_accuracy'])}"
            f" | {fmt(cells['gap'])} | {fmt_sci(cells['dE_0'])} | {fmt_sci(cells['dE_1'])}"
            f" | {fmt_sci(cells['lambda_max'])} | {fmt(cells['wall_seconds'], 1)}"
            f" | {cells['test_accuracy'][2]} |"
        )
    return lines


def verdict_lines(
    agg: dict[tuple[str, str], dict[str, tuple[float, float, int]]], model: str
) -> list[str]:
    lines = []
    for c in CONTENDERS:
        if (model, c) not in agg:
            continue
        a = agg[(model, c)]["test_accuracy"]
        parts = []
        for b_name in BASELINES:
            if (model, b_name) not in agg:
                continue
            b = agg[(model, b_name)]["test_accuracy"]
            word = verdict(a, b)
            parts.append(f"{word} {LABELS[b_name]} ({fmt(a)} vs {fmt(b)}, Δ = {a[0] - b[0]:+.3f})")
        lines.append(f"- **{LABELS[c]}**: " + "; ".join(parts) + ".")
    return lines


def flatness_lines(
    agg: dict[tuple[str, str], dict[str, tuple[float, float, int]]], model: str,
    sigmas: tuple[float, float],
) -> list[str]:  # fmt: skip
    methods = [m for m in METHODS if m != "ensemble" and (model, m) in agg]
    acc = [agg[(model, m)]["test_accuracy"][0] for m in methods]
    out = []
    for col, what in (("dE_1", f"δE(σ={sigmas[1]:g})"), ("dE_0", f"δE(σ={sigmas[0]:g})"),
                      ("lambda_max", "λ_max")):  # fmt: skip
        rho = spearman([agg[(model, m)][col][0] for m in methods], acc)
        if not math.isfinite(rho):
            out.append(f"- {what}: not enough methods with a finite value to rank.")
            continue
        crit = spearman_critical(len(methods))
        if rho <= -crit:
            reading = "flatter (smaller) went with better test accuracy"
        elif rho >= crit:
            reading = "flatter went with WORSE test accuracy"
        else:
            reading = f"no clear relation: |ρ| < {crit:.3g}, not significant at 5 %"
        out.append(
            f"- {what} vs test accuracy across the {len(methods)} single-model methods: "
            f"Spearman ρ = {rho:+.2f} ({reading})."
        )
    return out


# ------------------------------------------------------------------ the report


def _versions() -> dict[str, str]:
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(
    p: Protocol, rows: list[dict[str, Any]], sweep_rows: list[dict[str, Any]],
    chosen: dict[tuple[str, str], tuple[str, ...]], *, command: str, seconds: float,
    seeds: int, steps: dict[str, int], versions: dict[str, str], quick: bool, reused: str = "",
    rounds: dict[tuple[str, str], int] | None = None,
    invocations: list[dict[str, Any]] | None = None,
) -> str:  # fmt: skip
    sig = p.flatness.table_sigmas
    agg = aggregate(rows)
    models = [m for m in p.models if any(r["model"] == m for r in rows)]
    out = [
        "# Reproduction: coupled replicas against budget-matched baselines",
        "",
        "Generated by `jobs/compare.py`; do not edit by hand. Every number below is read back "
        f"from a run directory under `{p.storage}` (its `summary.json`, and the "
        f"`{MEASURES_FILE}` the run's task wrote beside it after training); "
        "`results/compare.parquet` holds one row per (model, method, seed) with its run directory.",
        "",
        f"- Command: `{command}`"
        + (" (**--quick**: a smoke-sized protocol, not the real one)" if quick else ""),
        f"- Run time: {seconds / 60:.1f} min wall for this invocation "
        "(sweep + final runs + flatness)" + (f"; {reused}" if reused else "") + ".",
        *invocation_lines(invocations or []),
        f"- Versions: Python {versions['python']}, torch {versions['torch']}, "
        f"Ray {versions['ray']}; CPU: {versions['cpu']}; date: {versions['date']}.",
        "",
        "## Protocol",
        "",
        f"- Data: {p.dataset}. Models: {', '.join(models)}. "
        f"Seeds: {seeds} (run.seed = 0 … {seeds - 1}). y = {p.replicas} replicas.",
        "- Budget: gradient evaluations per replica = "
        + ", ".join(f"{m}: {steps[m]}" for m in models)
        + " (Entropy-SGD and Parle count the L inner steps: effective epochs = L × outer steps). "
        f"SGD with y× steps trains one replica for {p.replicas}× that. Every run is one Ray task "
        "(num_cpus = 1, torch on one thread) that trains all its replicas in-process "
        f"(LocalGroup), so every task does {p.replicas} × steps gradient evaluations on one CPU: "
        "equal compute per method. The wall time column is that task's training wall time "
        "(summary.json `wall_seconds`); on a busy shared box it is indicative only.",
        "- Rows: **SGD** = the mean single replica of the sgd run (γ = 0, y independent "
        "replicas); **SGD, y× steps** = one replica trained y× as long; **ensemble of y SGD** = "
        "the output-averaged ensemble of the sgd run's replicas; **rSGD / Parle / EASGD center** "
        "= the one center model (BatchNorm statistics recomputed on training data); **eSGD** = "
        "the mean single replica of y independent Entropy-SGD runs.",
        f"- Hyperparameters: a sweep with one seed (run.seed = {p.sweep_seed}, not a final seed), "
        f"training on {100 * (1 - p.validation):.0f}% of the training set and selecting on the "
        f"held-out {100 * p.validation:.0f}% (`data.validation = {p.validation}`; the test set is "
        "never used for selection), by the validation accuracy of the row's model (mean replica "
        "for sgd/esgd, center otherwise). SGD, y× steps and the ensemble use SGD's chosen lr. "
        "Tried values and the chosen ones are listed below; all other settings are those of "
        "`jobs/configs/<method>.toml`.",
        f"- Flatness: multiplicative local energy δE(σ) = E_z[L(w + σ z ⊙ w)] − L(w) of the "
        f"training loss, M = {p.flatness.draws} draws (the same draws for every model), and the "
        f"top Hessian eigenvalue λ_max (Lanczos, ≤ {p.flatness.lanczos_steps} HVPs), both on the "
        f"first {p.flatness.subset} training samples (all of them if fewer). For SGD and eSGD the "
        "replicas' values are averaged within a run; the ensemble is not one set of weights, so "
        "it has none. Mean ± sample std (ddof 1) over seeds everywhere.",
        "",
        "## Results",
        "",
    ]  # fmt: skip
    for model in models:
        out += [f"### MNIST-1D {model}" if p.dataset == "mnist1d" else f"### {p.dataset} {model}",
                "", *table_lines(agg, model, sig), "",
                *detail_lines(rows, model, rounds or {}), ""]  # fmt: skip
    out += [
        "![accuracy by method](results/accuracy.png)",
        "",
        "![local energy](results/local_energy.png)",
        "",
        "## Did the coupled methods beat the budget-matched baselines?",
        "",
        "Test accuracy, as measured.",
        "",
        "A difference smaller than the seeds' spread (the larger of the two standard "
        "deviations) is called *no clear difference*.",
        "",
    ]
    for model in models:
        out += [f"**{model}**", "", *verdict_lines(agg, model), ""]
    out += [
        "## Did flatter go with better?",
        "",
        "Rank correlation across methods of the mean flatness with the mean test accuracy "
        "(ρ < 0: the flatter method generalized better); with six methods per model only "
        "|ρ| ≥ 0.886 is significant at 5 % (two-sided). "
        "Caveat (algorithms.md §7, Dinh et al.): raw "
        "Hessian eigenvalues change under function-preserving rescalings of ReLU layers, so "
        "λ_max can be made arbitrarily large or small without changing the function; "
        "multiplicative δE is invariant to that rescaling for positively homogeneous layers "
        "(the MLP), while BatchNorm in the CNN makes its weights scale-free in other ways. "
        "A correlation here is an observation about these runs, not a proof that flatness "
        "causes generalization.",
        "",
    ]
    for model in models:
        out += [f"**{model}**", "", *flatness_lines(agg, model, sig), ""]
    out += [
        "## Hyperparameter sweep (validation accuracy, one seed)",
        "",
        "| model | method | tried | validation acc | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in sweep_rows:
        pick = chosen.get((r["model"], r["method"])) == tuple(r["hyperparameters"].split())
        out.append(
            f"| {r['model']} | {LABELS[r['method']]} | `{r['hyperparameters'] or 'base config'}` "
            f"| {r['test_accuracy']:.3f} | {'✔' if pick else ''} |"
        )
    out += ["", "Run directories: " + f"`{p.storage}/<model>-<method>-s<seed>` (final), "
            f"`{p.storage}/sweep-<model>-<method>-<hp>` (sweep).", ""]  # fmt: skip
    return "\n".join(out)


def invocation_lines(invocations: list[dict[str, Any]]) -> list[str]:
    if len(invocations) < 2:
        return []
    lines = ["- The run directories were written by these invocations (a later one reuses "
             "what an earlier one finished):"]  # fmt: skip
    for inv in invocations:
        lines.append(
            f"  - {inv['date']}: `{inv['command']}`, {inv['minutes']:.1f} min, "
            f"{inv['trained']} runs trained, {inv['reused']} reused{inv.get('note', '')}"
        )
    return lines


def detail_lines(
    rows: list[dict[str, Any]], model: str, rounds: dict[tuple[str, str], int]
) -> list[str]:
    """Per-seed test accuracies and rounds per run, under each table."""
    lines = ["Per-seed test accuracy (seed 0, 1, …) and rounds per run:", ""]
    for method in METHODS:
        mine = sorted((r for r in rows if (r["model"], r["method"]) == (model, method)),
                      key=lambda r: r["seed"])  # fmt: skip
        if not mine:
            continue
        accs = ", ".join(f"{r['test_accuracy']:.3f}" for r in mine)
        source = "sgd" if method == "ensemble" else method
        n = rounds.get((model, source))
        lines.append(f"- {LABELS[method]}: {accs}" + (f" ({n} rounds)" if n else ""))
    return lines


def plots(p: Protocol, rows: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    models = [m for m in p.models if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        methods = [m for m in METHODS if (model, m) in agg]
        means = [agg[(model, m)]["test_accuracy"][0] for m in methods]
        stds = [np.nan_to_num(agg[(model, m)]["test_accuracy"][1]) for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=4,
               color=["#999" if m in BASELINES else "#3a7" for m in methods])  # fmt: skip
        for seed_row in (r for r in rows if r["model"] == model):
            ax.plot(methods.index(seed_row["method"]), seed_row["test_accuracy"], "k.", ms=3)
        ax.set_xticks(range(len(methods)), [LABELS[m] for m in methods], rotation=30, ha="right")
        lo = min(r["test_accuracy"] for r in rows if r["model"] == model)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(means) + 0.05))
        ax.set_ylabel("test accuracy (mean ± std, dots = seeds)")
        ax.set_title(f"{p.dataset} {model}")
    fig.tight_layout()
    acc = _png(fig, plt)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method in METHODS:
            mine = [
                r for r in rows if (r["model"], r["method"]) == (model, method) and r["dE_curve"]
            ]
            if not mine:
                continue
            curves = np.array([r["dE_curve"] for r in mine])
            mean = curves.mean(0)
            std = curves.std(0, ddof=1) if len(mine) > 1 else np.zeros_like(mean)
            ax.errorbar(mine[0]["sigmas"], mean, yerr=std, label=LABELS[method], capsize=2,
                        linestyle="--" if method in BASELINES else "-")  # fmt: skip
        ax.set_xlabel("σ (multiplicative noise)")
        ax.set_ylabel("δE: train loss increase")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(f"{p.dataset} {model}: local energy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return acc, _png(fig, plt)


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


# ------------------------------------------------------------------ the driver


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def run_all(jobs: list[Job], flat: FlatnessSpec, say: Any) -> list[dict[str, Any]]:
    """One Ray task per job (num_cpus = 1); returns results in job order."""
    import ray

    task: Any = ray.remote(num_cpus=1, max_retries=0)(run_job)
    refs = [task.remote(to_toml(j.config), j.method, j.phase, flat) for j in jobs]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    pending, started = list(refs), time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        i = index[ready[0]]
        results[i] = ray.get(ready[0])
        done = len(jobs) - len(pending)
        note = " (reused)" if results[i] and results[i]["reused"] else ""  # type: ignore[index]
        say(f"[{done}/{len(jobs)}] {jobs[i].name}{note}  {time.time() - started:.0f} s")
    return [r for r in results if r is not None]


def choose(
    p: Protocol, jobs: list[Job], sweep_rows: list[dict[str, Any]]
) -> dict[tuple[str, str], tuple[str, ...]]:
    chosen: dict[tuple[str, str], tuple[str, ...]] = {}
    best: dict[tuple[str, str], float] = {}
    for job, row in zip(jobs, sweep_rows, strict=True):
        key = (job.model, job.method)
        if key not in best or row["test_accuracy"] > best[key]:
            best[key], chosen[key] = row["test_accuracy"], job.hp
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=str(CONFIG_DIR / "compare_mnist1d.toml"))
    parser.add_argument("--seeds", type=int, default=None, help="final seeds (default: config)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="gradient evaluations per replica for every model (default: config)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="quick_seeds seeds and quick_steps steps (a smoke run)"
    )
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--storage", default=None, help="run directories (default: config)")
    parser.add_argument("--output", default=None, help="where RESULTS.md and results/ go")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override for every run, e.g. data.root=/data",
    )
    parser.add_argument(
        "--flatness",
        action="append",
        default=[],
        metavar="KEY=N",
        help="flatness setting for every model: subset, draws or lanczos_steps (e.g. draws=4)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    return parser.parse_args(argv)  # fmt: skip


def flatness_overrides(flat: FlatnessSpec, items: Sequence[str]) -> FlatnessSpec:
    """--flatness subset=50 --flatness draws=4: smaller measurements (tests, quick looks)."""
    allowed = ("subset", "draws", "lanczos_steps")
    for item in items:
        key, _, raw = item.partition("=")
        if (
            key not in allowed
            or not raw.isdigit()
            or int(raw) < (2 if key != "lanczos_steps" else 1)
        ):
            raise CompareError(
                f"--flatness {item!r}: expected one of {', '.join(allowed)} = N >= 2"
            )
        changes: dict[str, Any] = {key: int(raw)}
        flat = replace(flat, **changes)
    return flat


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    command = "python -m jobs.compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        p = load_protocol(args.config)
        models = tuple(args.models.split(",")) if args.models else p.models
        unknown = [m for m in models if m not in p.steps]
        if unknown:
            raise CompareError(f"--models {','.join(unknown)}: not in the config's compare.steps")
        p = replace(
            p, models=models,
            storage=_absolute(args.storage or p.storage), output=args.output or p.output,
            overrides=(*p.overrides, *args.overrides),
        )  # fmt: skip
        p = replace(p, flatness=flatness_overrides(p.flatness, args.flatness))
        seeds = args.seeds or (p.quick_seeds if args.quick else p.seeds)
        if args.steps is not None:
            steps = dict.fromkeys(models, args.steps)
        else:
            steps = {m: p.quick_steps if args.quick else p.steps[m] for m in models}
        root = load_config(CONFIG_DIR / "default.toml", list(p.overrides)).data.root
        extra = [f"data.root={_absolute(root)}"]
        sweep = sweep_jobs(p, steps, extra)
        final = final_jobs(p, steps, seeds, {(m, k): () for m in models for k in SWEPT}, extra)
    except (CompareError, ConfigError) as err:
        print(f"wv: error: {err}", file=sys.stderr)
        return 2
    from cluster.session import connect
    from foundation.data import load_dataset

    load_dataset(p.dataset, _absolute(root))  # build the cache once, before the tasks read it
    where = connect()

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"wv compare: {len(sweep)} sweep runs, then {len(final)} final runs, on {where}")
    if args.fresh:
        import shutil

        shutil.rmtree(p.storage, ignore_errors=True)
    results = run_all(sweep, p.flatness, say)
    sweep_rows = [row_of(j, j.method, p.storage, p.flatness.table_sigmas) for j in sweep]
    chosen = choose(p, sweep, sweep_rows)
    for (model, method), hp in sorted(chosen.items()):
        say(f"chosen for {model} {method}: {' '.join(hp) or 'base config'}")
    final = final_jobs(p, steps, seeds, chosen, extra)
    results += run_all(final, p.flatness, say)
    n_reused = sum(bool(r["reused"]) for r in results)
    reused = (
        f"{n_reused} of {len(results)} runs were finished run directories of an earlier "
        "invocation, reused as they are (their training time is not in this figure; "
        "`results/invocations.json`)"
        if n_reused
        else ""
    )
    rows = rows_of(final, p.storage, p.flatness.table_sigmas)
    seconds = time.time() - started
    out = Path(p.output)
    (out / "results").mkdir(parents=True, exist_ok=True)
    write_parquet(out / "results" / "compare.parquet", rows)
    write_parquet(out / "results" / "sweep.parquet", sweep_rows)
    acc_png, energy_png = plots(p, rows)
    (out / "results" / "accuracy.png").write_bytes(acc_png)
    (out / "results" / "local_energy.png").write_bytes(energy_png)
    versions = _versions()
    log = out / "results" / "invocations.json"
    invocations = json.loads(log.read_text()) if n_reused and log.exists() else []
    invocations.append({"date": versions["date"], "command": command, "minutes": seconds / 60,
                        "trained": len(results) - n_reused, "reused": n_reused})  # fmt: skip
    log.write_text(json.dumps(invocations, indent=2) + "\n")
    rounds = {(j.model, j.method): j.config.train.rounds for j in final}
    text = render(p, rows, sweep_rows, chosen, command=command, seconds=seconds, seeds=seeds,
                  steps=steps, versions=versions, quick=args.quick, reused=reused,
                  rounds=rounds, invocations=invocations)  # fmt: skip
    (out / "RESULTS.md").write_text(text)
    say(text.split("## Results", 1)[1].split("![accuracy")[0].strip())
    say(f"wrote {out / 'RESULTS.md'} and {out / 'results'}/ in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
