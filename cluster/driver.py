"""Drive one run on Ray: the Coordinator stepped round by round from here.

What `python -m jobs.train` (and every other way to start a run on a cluster) does after
its input checks: attach to or start Ray, fail early if the cluster cannot hold the
replicas, start the Coordinator (which starts the replica actors), print one line per
round, log to W&B if asked, and return the run's summary.

Where the Coordinator runs:
- on a cluster this process attached to (RAY_ADDRESS, `ray job submit`, a head that
  `ray start` left running): as an actor pinned to the driver's node. The driver may be
  anywhere the address reaches, and every round moves each replica's weights to the
  Coordinator: it stays on the cluster, and a driver that is only printing is not on
  the run's path.
- on the private local Ray that this process started (cluster/session.py): in this
  process. That Ray has one node, this one, and this process already holds torch and
  the Coordinator's code; an actor would add one more Python worker importing torch to
  the start of every run, on the same cores as the replicas'. The replicas are Ray
  actors either way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster import fast_start
from cluster.collective import replica_group_class
from cluster.resources import replica_resources, resolve_packing
from cluster.session import connect, owns_ray
from cluster.stopping import RunInterrupted, stop_grace_s, stop_on_signals
from cluster.validate import check_parts, on_remote_cluster
from coordinator.coordinator import Coordinator
from coordinator.groups import layout
from coordinator.loop import Steppable, drive
from coordinator.rundir import RunDir
from foundation.config import Config
from foundation.errors import WideValleyError
from foundation.parts import Parts


def one_line(err: Exception) -> str:
    """The error a Ray actor (or the Coordinator here) raised, as one line (not Ray's
    wrapped traceback)."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _say(line: str) -> None:
    print(line, flush=True)


def open_coordinator(config: Config, fresh: bool, job: str, parts: Parts | None) -> Coordinator:
    """The run's Coordinator, its replicas started on Ray (cluster/collective.py picks
    the group for the transport)."""
    group = functools.partial(replica_group_class(config), parts=parts)
    return Coordinator(config, group, fresh=fresh, job=job, parts=parts)


class CoordinatorHost:
    """The Coordinator's home: an actor or an object in this process (HostActor and
    HostHere below). It builds the Coordinator in start(), not in its own constructor,
    so that an error while the run opens (its directory held by another run, a config
    that does not match its checkpoint) reaches the driver as that error, not as a dead
    actor."""

    def start(
        self, config: Config, fresh: bool, job: str, parts: Parts | None = None
    ) -> dict[str, Any]:
        self.coordinator = open_coordinator(config, fresh, job, parts)
        return self.coordinator.status()

    def advance(self, budget_s: float) -> list[dict[str, Any]]:
        """Rounds for about `budget_s` seconds (coordinator/loop.py says why batches)."""
        return self.coordinator.advance(budget_s)

    def finish(self) -> dict[str, Any]:
        return self.coordinator.finish()

    def stop(self, reason: str) -> int:
        return self.coordinator.stop(reason)

    def shutdown(self) -> None:
        if hasattr(self, "coordinator"):
            self.coordinator.shutdown()


def run(
    config: Config, fresh: bool = False, say: Callable[[str], None] = _say,
    parts: Parts | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train `config` to its last round (resuming if its run directory holds a
    checkpoint, unless `fresh`); returns the summary. SIGTERM or SIGINT stop it at the
    next round boundary with a checkpoint (RunInterrupted)."""
    from foundation import tracking  # wandb is imported only when logging.wandb is on

    where = connect(dashboard_now=False)  # started after the first round, below
    config = resolve_packing(config, ray.nodes())
    replica_resources(config, ray.cluster_resources())  # fail before any actor starts
    if on_remote_cluster():
        check_parts(config, parts, remote=True)
    p, y, actors = (
        config.resources.replicas_per_actor,
        config.algorithm.replicas,
        len(layout(config)),
    )
    units = f" ({'one actor' if actors == 1 else f'{actors} actors'} of {p})" if p > 1 else ""
    say(
        f"wv: {config.algorithm.kind} with {y} replicas{units} of "
        f"{config.model.arch} on {config.data.dataset}, {config.train.rounds} rounds of "
        f"K={config.algorithm.coupling_period}, on {where}"
    )
    job = f"{ray.get_runtime_context().get_job_id()} (driver pid {os.getpid()})"
    host: Host = HostHere() if owns_ray() else HostActor()
    tracker = tracking.start(config, RunDir(config.run.storage, config.run.name).path)
    try:
        with stop_on_signals() as stopping:
            status = host.start(config, fresh, job, parts)
            if status["resumed_from"] is not None:
                say(f"wv: resuming from the checkpoint at round {status['resumed_from']}")

            def after_batch() -> None:
                fast_start.start_dashboard()  # the private Ray's, once training (no wait)
                for line in fast_start.dashboard_news():
                    say(line)
                if stopping.signum is not None:
                    _stop(host, stopping.signum)

            if stopping.signum is not None:  # a signal while the run started
                _stop(host, stopping.signum)
            with host.errors():
                summary = drive(host.steppable(), status["round"], config.train.rounds,
                                say=say, tracker=tracker, after_batch=after_batch)  # fmt: skip
        tracker.finish(summary)
        host.shutdown()
    finally:
        tracker.finish()
        host.close()
    return summary


class CoordinatorError(WideValleyError):
    """An error the Coordinator raised in this process (HostHere), carried as `cause` the
    way Ray's RayTaskError carries an actor's: the command's exit status then depends on
    the error alone, not on where the Coordinator ran (jobs/cli.py). Made by
    coordinator_error()."""

    def __init__(self, cause: BaseException) -> None:
        Exception.__init__(self, f"{type(cause).__name__}: {cause}")  # not the cause's
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[0])


def coordinator_error(err: Exception) -> CoordinatorError:
    """A CoordinatorError carrying `err`: a replica's error unwrapped from Ray's
    RayTaskError, as the driver sees it when the Coordinator is an actor. Where Python
    can combine the classes, it is also an instance of the cause's class, as Ray's
    RayTaskError is: `except LeaseHeld` around widevalley.fit() works wherever the
    Coordinator ran."""
    cause: BaseException = err
    if isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
        cause = err.cause
    try:
        name = f"CoordinatorError({type(cause).__name__})"
        carrying: type[CoordinatorError] = type(name, (CoordinatorError, type(cause)), {})
        return carrying(cause)
    except TypeError:  # a class Python cannot combine (a final one, a clashing layout)
        return CoordinatorError(cause)


class Host(Protocol):
    """The CoordinatorHost, wherever it runs (coordinator.loop.Steppable, and more)."""

    def start(
        self, config: Config, fresh: bool, job: str, parts: Parts | None
    ) -> dict[str, Any]: ...

    def steppable(self) -> Steppable:
        """What drive() steps: the Coordinator itself where it runs here, else a handle
        whose calls go to the actor."""
        ...

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Around the drive: the Coordinator's errors come out alike wherever it runs."""
        ...

    def stop(self, reason: str, timeout: float) -> int | None:
        """A polite stop's round; None if it took longer than `timeout` (where that can
        be cut short)."""
        ...

    def shutdown(self) -> None: ...

    def close(self) -> None:
        """Stop the Coordinator and its replicas, whatever state the run is in."""


class HostActor:
    """The CoordinatorHost as an actor on the driver's node: a worker node's loss then
    never takes the coordinator with it (a lost driver node is a lost driver:
    resubmitting resumes). Its replica actors are its own and die with it."""

    def __init__(self) -> None:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor: Any = (
            ray.remote(CoordinatorHost).options(num_cpus=0, scheduling_strategy=here).remote()
        )

    def start(self, config: Config, fresh: bool, job: str, parts: Parts | None) -> dict[str, Any]:
        status: dict[str, Any] = ray.get(self.actor.start.remote(config, fresh, job, parts))
        return status

    def steppable(self) -> Steppable:
        return self

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # Ray's errors carry the actor's already

    def advance(self, budget_s: float) -> list[dict[str, Any]]:
        progress: list[dict[str, Any]] = ray.get(self.actor.advance.remote(budget_s))
        return progress

    def finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = ray.get(self.actor.finish.remote())
        return summary

    def stop(self, reason: str, timeout: float) -> int | None:
        try:
            round_: int = ray.get(self.actor.stop.remote(reason), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return None  # past the grace: the last periodic checkpoint is what resumes
        return round_

    def shutdown(self) -> None:
        ray.get(self.actor.shutdown.remote())

    def close(self) -> None:
        ray.kill(self.actor)


class HostHere:
    """The Coordinator in this process (the private local Ray's only node), its errors
    raised as from the actor (coordinator_error). A call cannot be cut short here: the
    Coordinator's own calls to the replicas have their timeouts
    (train.round_timeout_s), but a polite stop's checkpoint is not bounded by
    stop_grace_s() as it is from the actor. That bound is for `ray job stop`, whose
    driver runs on a cluster and so takes HostActor."""

    coordinator: Coordinator | None = None

    def start(
        self, config: Config, fresh: bool, job: str, parts: Parts | None = None
    ) -> dict[str, Any]:
        with as_from_actor():
            self.coordinator = open_coordinator(config, fresh, job, parts)
            return self.coordinator.status()

    def steppable(self) -> Steppable:
        assert self.coordinator is not None, "start() first"
        return self.coordinator

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return as_from_actor()

    def stop(self, reason: str, timeout: float) -> int | None:
        assert self.coordinator is not None, "start() first"
        with as_from_actor():
            return self.coordinator.stop(reason)

    def shutdown(self) -> None:
        if self.coordinator is not None:
            with as_from_actor():
                self.coordinator.shutdown()

    def close(self) -> None:
        # Idempotent; the replica actors are this process's to stop. Suppressed: on the
        # way out of a failed run, its own error is the one to report.
        with contextlib.suppress(Exception):
            self.shutdown()


@contextlib.contextmanager
def as_from_actor() -> Iterator[None]:
    """An error raised inside comes out as CoordinatorError, as from the actor; not a
    polite stop (RunInterrupted carries its exit status), nor KeyboardInterrupt (a
    second signal stops at once), nor one carried already."""
    try:
        yield
    except (RunInterrupted, CoordinatorError):
        raise
    except Exception as err:
        raise coordinator_error(err) from err


def _stop(host: Host, signum: int) -> None:
    """Checkpoint, log `stopped` and release the run directory within the grace period;
    then end the run (RunInterrupted carries the exit status)."""
    raise RunInterrupted(signum, host.stop(signal.Signals(signum).name, stop_grace_s()))
