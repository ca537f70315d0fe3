"""The Tune side of a sweep: the scheduler, the Tuner (new, or restored from the sweep
directory), and the fingerprint that keeps a restored sweep the same sweep."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from coordinator.resume import ResumeMismatch
from foundation.storage import Storage
from jobs.sweep.resources import Bundle
from jobs.sweep.space import flat
from jobs.sweep.sweepfile import Sweep, join
from jobs.sweep.trial import Plan, run_trial


def make_scheduler(sweep: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s, rounds = sweep.sweep, sweep.base.train.rounds
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="round",
            max_t=rounds,
            grace_period=min(s.asha.grace_period, rounds),
            reduction_factor=s.asha.reduction_factor,
        )
    if s.scheduler == "pbt":
        space = sweep.space

        def clip(config: dict[str, Any]) -> dict[str, Any]:
            return {k: space[k].clip(v) if k in space else v for k, v in config.items()}

        return PopulationBasedTraining(
            time_attr="round",
            perturbation_interval=s.pbt.perturbation_interval,
            hyperparam_mutations={k: space[k].for_pbt() for k in sweep.mutable},
            quantile_fraction=s.pbt.quantile_fraction,
            resample_probability=s.pbt.resample_probability,
            custom_explore_fn=clip,
            synch=s.pbt.synch,
        )
    return FIFOScheduler()


def fingerprint(sweep: Sweep) -> dict[str, Any]:
    """What makes two sweeps the same sweep (a restored one must match it)."""
    options = dataclasses.asdict(sweep.sweep)
    options.pop("max_concurrent_trials")  # a resumed sweep may run more or fewer at once
    space = {k: [d.kind, list(d.values)] for k, d in sweep.space.items()}
    return {"sweep": options, "space": space, "base": flat(sweep.base)}


def check_same_sweep(sweep: Sweep) -> None:
    store = Storage(sweep.uri)
    if not store.exists("sweep.json"):
        return
    saved = json.loads(store.read_bytes("sweep.json"))
    now = json.loads(json.dumps(fingerprint(sweep)))  # as saved: tuples become lists
    for part in ("sweep", "space", "base"):
        for key in sorted(set(saved[part]) | set(now[part])):
            if saved[part].get(key) != now[part].get(key):
                name = key if part == "base" else f"{part}.{key}".replace("space.", "sweep.space.")
                raise ResumeMismatch(
                    f"{sweep.uri} holds a sweep with {name} = {saved[part].get(key)!r}, not "
                    f"{now[part].get(key)!r}: use --fresh to start over, or another sweep.name"
                )


def keep_checkpoints(sweep: Sweep) -> int:
    """Tune checkpoints kept per trial: PBT may copy one from its last perturbation, up to
    perturbation_interval rounds back; the other schedulers only resume from the newest."""
    if sweep.sweep.scheduler != "pbt":
        return 2
    reports = math.ceil(sweep.sweep.pbt.perturbation_interval / sweep.base.train.eval_every)
    return 2 * reports + 2


def make_plan(sweep: Sweep) -> Plan:
    from foundation import tracking

    s = sweep.sweep
    return Plan(
        base=flat(sweep.base),
        space=sweep.space,
        runs=join(sweep.base.run.storage, s.name, "runs"),
        sweep_name=s.name,
        pbt=s.scheduler == "pbt",
        allow_changes=sweep.mutable if s.scheduler == "pbt" else (),
        inprocess=s.replicas == "inprocess",
        # Decided here, once: a trial must never go online with W&B on its own.
        env=tracking.environment() if sweep.base.logging.wandb else {},
    )


def make_tuner(sweep: Sweep, bundles: list[Bundle], at_once: int, fresh: bool) -> Any:
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=make_plan(sweep)), tune.PlacementGroupFactory(bundles)
    )
    param_space = {key: d.for_tune() for key, d in sweep.space.items()}
    experiment = join(sweep.uri, "tune")
    if not fresh and tune.Tuner.can_restore(experiment):
        check_same_sweep(sweep)
        print(f"wv: resuming the sweep in {experiment}", flush=True)
        return tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True,
            param_space=param_space,
        )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config(sweep, at_once),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=sweep.uri,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints(sweep)),
            failure_config=tune.FailureConfig(max_failures=sweep.sweep.max_failures),
            verbose=1,
        ),
    )


def tune_config(sweep: Sweep, at_once: int) -> Any:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = sweep.sweep
    return tune.TuneConfig(
        metric=s.metric,
        mode=s.direction,
        scheduler=make_scheduler(sweep),
        # The variant generator takes the limit itself (TuneConfig's would be ignored).
        search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=at_once),
        num_samples=s.num_samples,
        reuse_actors=False,  # a trial's replicas die with its actor, never outlive it
    )
