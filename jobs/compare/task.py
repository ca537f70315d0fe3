"""One run, as one Ray task (num_cpus = 1): train in-process, then measure what it found.

Training uses LocalGroup (all y replicas in this process, torch on one thread), so every
task does y × steps gradient evaluations on one CPU: equal compute for every method.
A final run's measurements go into the run directory (MEASURES_FILE), so the table is
built from run directories only. Models, data, loss and metric are the run's own
(foundation.parts, resolved in the task: a user's module is imported there), and
every measure is of the run's loss.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator import checkpoint
from coordinator.coordinator import Coordinator
from coordinator.groups import LocalGroup
from coordinator.loop import drive
from coordinator.report import ensemble_scores
from coordinator.rundir import RunDir
from foundation.config import Config, config_from_text, to_toml
from foundation.data import Dataset
from foundation.evaluation import EVAL_TRAIN_SAMPLES, load_vector_, metrics
from foundation.parts import LossFn, Parts
from jobs.compare.methods import MEASURES_FILE, REPLICA_ROWS
from jobs.compare.protocol import FlatnessSpec
from landscape import hessian_top_eigenvalues, local_energy


def _model_from(
    config: Config, parts: Parts, vector: Any, data: Dataset, center: bool
) -> nn.Module:
    """The model a flat vector holds, in eval mode; a center's BatchNorm statistics are
    recomputed (foundation.evaluation: the same center the replicas evaluated)."""
    model = parts.new_model(data, seed=0)  # every weight is overwritten below
    load_vector_(
        model, torch.as_tensor(vector), data, center=center,
        batch_size=config.data.batch_size, bn_batches=config.train.bn_batches,
    )  # fmt: skip
    return model.eval()


def _flatness_of(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, flat: FlatnessSpec, loss: LossFn
) -> dict[str, Any]:
    """δE(σ) (multiplicative, the same draws for every model) and λ_max of one model, of
    the run's loss."""
    energy = local_energy(
        model, x, y, flat.sigmas, noise="multiplicative", num_samples=flat.draws, seed=0,
        loss_fn=loss,
    )  # fmt: skip
    eig = hessian_top_eigenvalues(
        model, x, y, k=1, loss_fn=loss, max_steps=flat.lanczos_steps, seed=0
    )
    return {
        "loss_delta": [float(v) for v in energy.loss_delta],
        "loss_delta_se": [float(v) for v in energy.loss_delta_se],
        "lambda_max": float(eig.values[0]),
        "lambda_residual": float(eig.residuals[0]),
    }


def _ensemble_train(
    config: Config, parts: Parts, state: dict[str, Any], data: Dataset
) -> dict[str, float]:
    """The output ensemble of the replicas on the summary's train prefix, scored as the
    run scores its ensemble on test (coordinator.report: averaged class probabilities
    with cross entropy, else averaged outputs; the run's loss and metric):
    ensemble_train_loss, and ensemble_train_accuracy or _metric when the run has one."""
    outputs = [
        metrics(_model_from(config, parts, r["flat"], data, False), data.train,
                EVAL_TRAIN_SAMPLES, parts.loss, parts.metric)[2].cpu().numpy()
        for r in state["replicas"]
    ]  # fmt: skip
    targets = data.train.y[:EVAL_TRAIN_SAMPLES].cpu().numpy()
    scores = ensemble_scores(outputs, targets, parts)
    return {key.replace("_test_", "_train_"): value for key, value in scores.items()}


def measure_models(
    config: Config, run_dir: RunDir, flat: FlatnessSpec, method: str
) -> dict[str, Any]:
    """Flatness of the run's reported model(s), and the ensemble's train accuracy."""
    found = checkpoint.load_latest(run_dir)
    if found is None:
        raise RuntimeError(f"{run_dir.path} has no checkpoint")
    _, state = found
    parts = Parts.from_config(config)
    data = parts.load_data(config)  # what the replicas trained on (held_out as they did)
    n = min(flat.subset, len(data.train.y))
    x, y = data.train.x[:n], data.train.y[:n]
    if method in REPLICA_ROWS:
        vectors = [(r["flat"], False) for r in state["replicas"]]
    else:
        vectors = [(state["center"], True)]
    per_model = [
        _flatness_of(_model_from(config, parts, v, data, c), x, y, flat, parts.loss)
        for v, c in vectors
    ]
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
    if method == "sgd":  # the ensemble row reads the sgd run
        out |= _ensemble_train(config, parts, state, data)
    return out


def _finished(run: RunDir, config: Config, phase: str) -> bool:
    """Whether the run directory already holds this exact run, finished (and measured)."""
    return (
        run.exists("summary.json")
        and run.exists("config.toml")
        and run.read_bytes("config.toml").decode() == to_toml(config)
        and (phase == "sweep" or run.exists(MEASURES_FILE))
    )


def _train(config: Config) -> None:
    coordinator = Coordinator(config, LocalGroup, fresh=True)
    try:
        drive(coordinator, coordinator.round, config.train.rounds)
    finally:
        coordinator.shutdown()


def run_job(config_toml: str, method: str, phase: str, flat: FlatnessSpec) -> dict[str, Any]:
    """Train one run in this process (LocalGroup), then measure it; returns its run dir.

    A run directory that already holds a finished run of this exact config (and its
    measurements) is reused, so an interrupted comparison picks up where it stopped.
    """
    torch.set_num_threads(1)  # one CPU per task, as Ray's num_cpus = 1 reserves
    config = config_from_text(config_toml)
    run = RunDir(config.run.storage, config.run.name)
    done = _finished(run, config, phase)
    if not done:
        started = time.time()
        _train(config)
        if phase == "final":
            measured = measure_models(config, run, flat, method)
            measured["task_seconds"] = time.time() - started
            run.write_json(MEASURES_FILE, measured)
    return {"run_dir": run.path, "storage": config.run.storage, "name": config.run.name,
            "reused": done}  # fmt: skip
