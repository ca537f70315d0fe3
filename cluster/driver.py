"""Drive one run on Ray: the Coordinator as an actor, stepped round by round from here.

What `python -m jobs.train` (and every other way to start a run on a cluster) does after
its input checks: attach to or start Ray, fail early if the cluster cannot hold the
replicas, start the Coordinator actor (which starts the replica actors), print one line
per round, log to W&B if asked, and return the run's summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from cluster.actors import RayReplicaGroup, replica_resources
from cluster.session import connect
from coordinator.coordinator import Coordinator
from coordinator.report import progress_line
from coordinator.rundir import RunDir
from foundation.config import Config


def one_line(err: ray.exceptions.RayError) -> str:
    """The error a Ray actor raised, as one line (not Ray's wrapped traceback)."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _say(line: str) -> None:
    print(line, flush=True)


def run(config: Config, fresh: bool = False, say: Callable[[str], None] = _say) -> dict[str, Any]:
    """Train `config` to its last round (resuming if its run directory holds a
    checkpoint, unless `fresh`); returns the summary."""
    from foundation import tracking  # wandb is imported only when logging.wandb is on

    where = connect()
    replica_resources(config, ray.cluster_resources())  # fail before any actor starts
    say(
        f"wv: {config.algorithm.kind} with {config.algorithm.replicas} replicas of "
        f"{config.model.arch} on {config.data.dataset}, {config.train.rounds} rounds of "
        f"K={config.algorithm.coupling_period}, on {where}"
    )
    coordinator: Any = ray.remote(num_cpus=0)(Coordinator).remote(
        config, RayReplicaGroup, fresh=fresh
    )
    tracker = tracking.start(config, RunDir(config.run.storage, config.run.name).path)
    try:
        status = ray.get(coordinator.status.remote())
        if status["resumed_from"] is not None:
            say(f"wv: resuming from the checkpoint at round {status['resumed_from']}")
        at = status["round"]
        while at < config.train.rounds:
            progress = ray.get(coordinator.step.remote())
            say(progress_line(progress, config.train.rounds))
            tracker.log(progress)
            at = progress["round"]
        summary: dict[str, Any] = ray.get(coordinator.finish.remote())
        tracker.finish(summary)
        ray.get(coordinator.shutdown.remote())
    finally:
        tracker.finish()
        ray.kill(coordinator)
    return summary
