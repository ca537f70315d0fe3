"""Measuring every model: in this process one after another (--local), or one Ray task
per model. Both call measure_model, so they give the same numbers to the last bit."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import torch

from foundation.models import count_parameters
from jobs.flatness.inputs import ModelSpec, dataset_of, parts_of, prepare_model
from jobs.flatness.measuring import ProgressFn, measure
from jobs.flatness.rescaling import rescale_check
from jobs.flatness.rows import Result, rows_of, summary_of
from jobs.flatness.settings import MEASURES, SHORT, FlatnessError, Settings, shown


def measure_model(
    spec: ModelSpec, settings: Settings, progress: ProgressFn | None = None
) -> Result:
    """Everything about one model as plain data: tidy rows, a summary, the rescale check."""
    started = time.perf_counter()
    parts = parts_of(spec.config)  # resolved here: a Ray task imports user code itself
    model, bn_note = prepare_model(spec, settings.device, parts)
    loaded = time.perf_counter() - started
    data = dataset_of(spec.config)
    measured = measure(model, data, parts, settings, progress)
    measured.seconds["load_and_batchnorm"] = loaded
    result: Result = {
        "name": spec.name,
        "group": spec.group,
        "role": spec.role,
        "run": spec.run,
        "round": spec.round,
        "arch": spec.config.model.arch,
        "algorithm": spec.config.algorithm.kind,
        "loss": spec.config.train.loss,
        "parameters": count_parameters(model),
        "batchnorm": bn_note,
        "measured_by": {"host": socket.gethostname(), "pid": os.getpid()},
        "rows": rows_of(spec, measured),
        "summary": summary_of(measured, settings),
    }
    seconds = result["summary"]["wall_seconds"]
    if settings.rescale_alpha is not None:
        rescale_started = time.perf_counter()
        result["rescale"] = rescale_check(model, data, measured, parts, settings, progress)
        seconds["rescale_check"] = time.perf_counter() - rescale_started
    seconds["total"] = time.perf_counter() - started
    return result


def _measure_task(spec: ModelSpec, settings: Settings) -> Result:
    """What one Ray task runs: one model on settings.threads threads (its num_cpus)."""
    torch.set_num_threads(settings.threads)
    return measure_model(spec, settings)


def run_measurements(
    specs: Sequence[ModelSpec], settings: Settings, *, local: bool
) -> list[Result]:
    """measure_model for every spec: in this process, or one Ray task per model."""
    return _in_process(specs, settings) if local else _on_ray(specs, settings)


def _in_process(specs: Sequence[ModelSpec], settings: Settings) -> list[Result]:
    total, results = len(specs), []
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # as a Ray task would: the same numbers
    try:
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{total}] {spec.name}: measuring (round {spec.round})", flush=True)
            result = measure_model(spec, settings, _printer(spec.name))
            print(f"[{i}/{total}] {_done_line(result)}", flush=True)
            results.append(result)
    finally:
        torch.set_num_threads(threads)
    return results


def _on_ray(specs: Sequence[ModelSpec], settings: Settings) -> list[Result]:
    import ray  # only here: --local runs without starting or importing Ray

    from cluster.session import connect

    where = connect()
    gpus = 1 if settings.device.startswith("cuda") else 0
    if gpus and ray.cluster_resources().get("GPU", 0) < 1:  # the tasks would wait forever
        raise FlatnessError(f"--device {settings.device}: the Ray cluster has no GPU")
    task: Any = ray.remote(num_cpus=settings.threads, num_gpus=gpus)(_measure_task)
    refs = [task.remote(spec, settings) for spec in specs]
    total = len(specs)
    print(f"flatness: {total} Ray tasks (one per model) on {where}", flush=True)
    index = {ref: i for i, ref in enumerate(refs)}
    found: dict[int, Result] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            found[index[done[0]]] = result
            print(f"[{len(found)}/{total}] {_done_line(result)}", flush=True)
    finally:
        for ref in pending:  # one failure ends the report: do not leave tasks running
            ray.cancel(ref, force=True)
    return [found[i] for i in range(total)]


def _printer(name: str) -> ProgressFn:
    return lambda line: print(f"    {name}: {line}", flush=True)


def _done_line(result: Result) -> str:
    s = result["summary"]
    seconds = s["wall_seconds"]
    parts = " · ".join(
        f"{k.removeprefix('hessian_').removeprefix('local_energy_')} {seconds[k]:.1f} s"
        for k in MEASURES
        if k in seconds
    )
    if "rescale" in result:
        parts += " · then all again, α-rescaled"
    return (
        f"{result['name']}: done in {seconds['total']:.1f} s ({parts}); λ_max "
        f"{s['top_eigenvalue']:.4g}, tr H {s['trace']['mean']:.4g}, "
        f"{SHORT[s['headline']]} {shown(s['headline'], s[s['headline']])}"
    )
