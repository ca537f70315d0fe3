"""The Coordinator: the round loop of one run (a plain class; a Ray actor at run time).

Each round: send the center (or nothing) with γ and ρ to every replica, gather one flat
buffer per replica, keep failed replicas out of the center (failures.py decides what
happens to them), form the new center (the mean, or EASGD's explicit w̃), advance the
scoping schedules, record one metrics row per replica, and every E rounds evaluate the
center, the replicas and their ensemble. The replicas sit behind a ReplicaGroup
(groups.py): in-process objects or Ray actors (cluster/actors.py), so tests step this
class without a cluster. Every call to the group is run_rounds(plan): where one unit
holds every replica and rounds are short, that unit runs the plan's rounds in one call
and forms their centers itself (replicas/chain.py), else the group runs the first round
alone; either way the coordinator records the rounds formed and forms the last as
above (one step path: _rounds). Every C rounds (and at the end) a checkpoint; a new
Coordinator on the same run directory resumes from the newest good one (snapshot.py).
The run holds its directory's lease (lease.py) from its first write to its end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
from torch import Tensor

from coordinator import checkpoint, report, snapshot
from coordinator.center_keeper import Center, GatheredCenter
from coordinator.failures import MAX_CONSECUTIVE_FAILURES, Divergence, FailurePolicy, RunFailed
from coordinator.groups import (
    KEPT,
    Plan,
    ReplicaGroup,
    ReplicaLost,
    ReplicasLost,
    RoundOutcome,
    delivered,
)
from coordinator.lease import Lease, LeaseLost
from coordinator.report import annotate, evaluation, headline, headline_value
from coordinator.rundir import CENTER_FILE, RunDir, torch_bytes
from foundation.config import Config, to_toml
from foundation.parts import Parts
from foundation.storage import StorageError
from replicas.replica import RoundStats, replica_seed

GroupFactory = Callable[[Config], ReplicaGroup]
T = TypeVar("T")
Failed = dict[int, str]  # replica → why it failed this round

CHAIN_BELOW_S = 0.1
"""advance() plans several rounds a call when rounds are shorter than this: a round's
crossing to the replicas and back is then a visible share of it; a longer round gains
little, and a chain carries the center's whole state (a large model's) on every call."""


class Coordinator:
    def __init__(
        self,
        config: Config,
        group_factory: GroupFactory,
        *,
        fresh: bool = False,
        allow_changes: tuple[str, ...] = (),
        job: str = "",
        parts: Parts | None = None,
    ) -> None:
        self.config = config
        self.parts = parts if parts is not None else Parts.from_config(config)
        self.allow_changes = allow_changes
        self.run = RunDir(config.run.storage, config.run.name)
        # Nothing is written here before the lease is ours (a second run fails at once).
        self.lease = Lease(self.run.storage, job).acquire()
        try:
            self._prepare(group_factory, fresh)
        except BaseException:
            if hasattr(self, "group"):  # replicas started before the failure
                self.group.shutdown()
            self.lease.release()
            raise

    def _prepare(self, group_factory: GroupFactory, fresh: bool) -> None:
        config = self.config
        if fresh:
            self.run.clear()
        self.gamma, self.rho = snapshot.scopes(config)
        self.group = group_factory(config)
        for loss in self.group.start_losses:  # started again: nothing to restore yet
            for a in loss.replicas:
                self.run.event("replica_restarted", round=0, replica=a, reason=loss.reason,
                               node="", now_on=loss.now_on, lr_scale=1.0)  # fmt: skip
        self.round = 0
        algo = config.algorithm
        # The units keep the center themselves with the collective transport.
        shared = getattr(self.group, "shared_center", None)
        self.rule: Center = (
            shared() if shared else GatheredCenter(algo.kind, algo.outer_lr, algo.outer_momentum)
        )
        self.rows: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.policy = FailurePolicy(self.group.size, config.train.on_divergence)
        self.started = time.time()
        self._last_round_s = float("inf")  # the first round is never chained
        leftovers = self.run.remove_leftovers()
        if leftovers:
            self.run.event("leftovers_removed", names=leftovers)
        self.resumed_from = snapshot.restore(self)
        for record in self.run.aside:  # damaged records found while resuming
            self.run.event("record_set_aside", **record)
        if self.resumed_from is None:
            if self.rule.starts_from_initial_weights:  # θ0: the replicas' common init
                self.rule.start(torch.as_tensor(self.group.states()[0]["flat"]))
            self.run.write_text("config.toml", to_toml(config))
            self.run.event("start", replicas=self.group.size, algorithm=config.algorithm.kind)

    @property
    def center(self) -> Tensor | None:
        """The center w̄ (or EASGD's w̃) after the last round; None before the first."""
        return self.rule.value

    @property
    def done(self) -> bool:
        return self.round >= self.config.train.rounds

    def status(self) -> dict[str, Any]:
        rounds = self.config.train.rounds
        return {"round": self.round, "rounds": rounds, "resumed_from": self.resumed_from}

    # ---- one round ---------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A storage failure (disk full, permission lost, an object store that refuses) or a
        lost lease inside stops the run with one line, good checkpoints kept."""
        try:
            self.lease.renew()
            yield
        except (StorageError, LeaseLost) as err:
            self._stop(err)

    def step(self) -> dict[str, Any]:
        """Run one round; returns a short progress record for the driver to print."""
        if self.done:
            raise RuntimeError(f"the run is done: all {self.config.train.rounds} rounds ran")
        [record] = self.advance(0.0, chain=False)
        return record

    def advance(self, budget_s: float, chain: bool = True) -> list[dict[str, Any]]:
        """Rounds until `budget_s` seconds have passed (at least one), a round was
        evaluated (a caller that acts on evaluations, as Tune's reporter does, then finds
        the coordinator at that round) or the run is done; one progress record each.
        `chain`: rounds may run several to a call to the replicas (_plan says when)."""
        deadline, records = time.perf_counter() + budget_s, []
        while not self.done:
            with self._writing():
                records += self._rounds(self._plan(chain), deadline - time.perf_counter())
            if time.perf_counter() >= deadline or "headline" in records[-1]:
                break
        return records

    def _plan(self, chain: bool) -> Plan:
        """(γ, ρ) of the rounds the next call to the group may run. Chained: up to the next
        evaluation, checkpoint or the end, when rounds are short (a crossing to the
        replicas and back is then a visible share of each; a group that cannot chain
        runs the first alone). Else this round alone; round 1 always, since it measures
        the automatic γ0 that every later round's γ depends on."""
        r = self.round
        chains = chain and r > 0 and self._last_round_s < CHAIN_BELOW_S
        end = self._next_stop() if chains else r + 1
        return [(self.gamma.value(q), self.rho.value(q)) for q in range(r, end)]

    def _next_stop(self) -> int:
        """The next round count at which the coordinator evaluates, checkpoints or ends."""
        train = self.config.train
        every = [e for e in (train.eval_every, train.checkpoint_every) if e]
        return min([train.rounds] + [(self.round // e + 1) * e for e in every])

    def _rounds(self, plan: Plan, budget_s: float) -> list[dict[str, Any]]:
        """One call to the group, recorded: the rounds whose center a unit formed as they
        came, then the last one formed here (failed replicas kept out, and restarted).

        When every replica is lost at once (the one actor that holds them all died, as
        resources.replicas_per_actor = auto packs the default), there is no new center
        to restart them from: they restart from the last one and the call is made again,
        up to MAX_CONSECUTIVE_FAILURES times (then the failure policy stops the run)."""
        r = self.round + 1
        for _ in range(MAX_CONSECUTIVE_FAILURES):
            ran = self.group.run_rounds(self.rule, plan, budget_s)
            lost = {a: o for a, o in enumerate(ran.last) if isinstance(o, ReplicaLost)}
            # Nothing to go back to in round 1, nor with the collective transport, whose
            # center lives in the units and is lost with them.
            gathered = isinstance(self.rule, GatheredCenter) and self.center is not None
            if len(lost) < self.group.size or not gathered:
                break
            for a, outcome in lost.items():
                self._restart(r, a, f"lost: {outcome.reason}")
        if ran.center is not None:
            self.rule.load_state_dict(ran.center)
        records = []
        for formed in ran.formed:
            outcomes: list[RoundOutcome] = [(KEPT, stats) for stats in formed.stats]
            failed = self._failures(self.round + 1, outcomes)  # none: the chain stops first
            stats = dict(enumerate(formed.stats))
            distances = dict(enumerate(formed.distances))
            records.append(self._close_round(stats, distances, failed, formed.seconds))
        return [*records, self._form(ran.last, ran.last_seconds)]

    def _form(self, outcomes: list[RoundOutcome], round_s: float) -> dict[str, Any]:
        """Form the center of a round the group ran: failed replicas are kept out of it
        and restarted from it."""
        r, gamma = self.round, self.gamma.value()
        gathered = time.perf_counter()
        failed = self._failures(r + 1, outcomes)  # rounds count from 1 in every record
        good = [a for a in range(self.group.size) if a not in failed]
        stats = {a: delivered(outcomes[a])[1] for a in good}
        lr, p = self.config.algorithm.lr, self.group.num_params
        formed = self.rule.form(outcomes, good, gamma, lr, p)
        distances = {a: d for a, d in formed.items() if not isinstance(d, ReplicaLost)}
        lost = {a: f"lost: {o.reason}" for a, o in formed.items() if isinstance(o, ReplicaLost)}
        failed |= self._decided(r + 1, lost, [])  # lost while it was formed (collective)
        for a, reason in failed.items():
            self._restart(r + 1, a, reason)
        center_s = time.perf_counter() - gathered
        return self._close_round(stats, distances, failed, (round_s, center_s))

    def _close_round(
        self, stats: dict[int, RoundStats], distances: dict[int, float], failed: dict[int, str],
        seconds: tuple[float, float],
    ) -> dict[str, Any]:  # fmt: skip
        """Record the round just formed (`distances`: of its good replicas), advance the
        schedules; evaluate and checkpoint when the round is due for them."""
        r, gamma, rho = self.round, self.gamma.value(), self.rho.value()
        losses = [stats[a].train_loss for a in distances]
        if r == 0:
            half_sq = float(np.mean([d * d for d in distances.values()])) / 2
            self.gamma.calibrate(float(np.mean(losses)), half_sq)
        lrs = [self.config.algorithm.lr * scale for scale in self.policy.lr_scale]
        self.rows += report.metrics_rows(r + 1, gamma, rho, stats, distances, failed, lrs, seconds)
        self.round += 1
        self.gamma.step()
        self.rho.step()
        self._last_round_s = seconds[0]
        progress: dict[str, Any] = {
            "round": self.round,
            "gamma": gamma,
            "mean_loss": float(np.mean(losses)),
            "mean_distance": float(np.mean(list(distances.values()))),
            "seconds": sum(seconds),
            "failed": sorted(failed),
        }
        if self.round % self.config.train.eval_every == 0 or self.done:
            name, _ = headline(self.parts, self.config.algorithm.kind)
            record = self.evaluate()
            kind = name.rsplit("_", 1)[1]  # the center's number too: a Tuner may rank by it
            progress |= {"headline": name, name: headline_value(record, name),
                         f"center_test_{kind}": record["center"][f"test_{kind}"]}  # fmt: skip
        every = self.config.train.checkpoint_every
        if every and self.round % every == 0 and not self.done:
            self._checkpoint()
            progress["checkpoint"] = True
        return progress

    def _failures(self, r: int, outcomes: list[RoundOutcome]) -> Failed:
        """The replicas lost or diverged this round (→ reason); stops the run if the
        failure policy says so."""
        failed, diverged = self.policy.classify(outcomes)
        for d in diverged:
            self.run.event(
                "divergence", round=r, replica=d.replica, loss=str(d.loss),
                last_finite_loss=d.last_finite_loss,
            )  # fmt: skip
        return self._decided(r, failed, diverged)

    def _decided(self, r: int, failed: Failed, diverged: list[Divergence]) -> Failed:
        """`failed`, once the failure policy has counted them; stops the run if it says so."""
        error = self.policy.decide(r, failed, diverged)
        if error is not None:
            self._stop(error)
        return failed

    def _stop(self, error: Exception) -> NoReturn:
        """Keep what was measured where storage still allows, give the run directory
        back, then fail the run with one clear line."""
        if not isinstance(error, LeaseLost):  # without the lease, this run writes nothing
            with contextlib.suppress(OSError):  # the failure may be storage itself
                self._save_metrics()
            with contextlib.suppress(OSError):
                self.run.event("stopped", reason=str(error), round=self.round)
        self.lease.release()
        raise error

    def stop(self, reason: str) -> int:
        """A polite stop (SIGTERM or SIGINT at the driver): checkpoint the rounds done,
        log `stopped`, give the run directory back. Returns the round checkpointed."""
        try:
            if self.round > 0 and not checkpoint.verified(self.run, self.round):
                self._checkpoint()
            self.run.event("stopped", reason=reason, round=self.round)
        finally:
            self.shutdown()
        return self.round

    def _restart(self, r: int, a: int, reason: str) -> None:
        """Replica a starts again from the new center, its data stream where it was."""
        assert self.center is not None
        seed, node = replica_seed(self.config.run.seed, a), self.group.node_of(a)
        self.group.replace(a, self.policy.restart_state(a, reason, self.center, seed))
        self.run.event("replica_restarted", round=r, replica=a, reason=reason, node=node,
                       now_on=self.group.node_of(a), lr_scale=self.policy.lr_scale[a])  # fmt: skip

    def _surviving(self, call: Callable[[], T]) -> T:
        """A call to every replica outside a round (evaluation, checkpoint): replicas lost
        meanwhile (a dead actor, a lost node) restart from the center, then it is retried."""
        for _ in range(MAX_CONSECUTIVE_FAILURES):
            try:
                return call()
            except ReplicasLost as lost:
                for a, why in lost.lost.items():
                    self._restart(self.round, a, f"lost: {why.reason}")
        try:
            return call()
        except ReplicasLost as lost:  # lost every time: stop, metrics and events kept
            self._stop(RunFailed(f"{lost} (after {MAX_CONSECUTIVE_FAILURES} restarts)"))

    # ---- evaluation, checkpoints, the end ----------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Evaluate center, replicas and their output ensemble; note it in the metrics."""
        assert self.center is not None, "evaluate after the first round"
        center = self.center.numpy()
        results = self._surviving(lambda: self.group.evaluate(center))
        record = evaluation(self.round, results, self.parts)
        self.evaluations.append(record)
        annotate(self.rows[-self.group.size :], record)
        self._save_metrics()
        return record

    def states(self) -> list[dict[str, Any]]:
        return self._surviving(self.group.states)

    def _save_metrics(self) -> None:
        if self.rows:
            self.run.write_table("metrics.parquet", self.rows)

    def checkpoint(self) -> str:
        """Save all that resuming at self.round needs (metrics first: they must cover it)."""
        with self._writing():
            return self._checkpoint()

    def _checkpoint(self) -> str:
        self._save_metrics()
        keep = self.config.train.keep_checkpoints
        where = checkpoint.save(self.run, self.round, snapshot.capture(self), keep=keep)
        self.run.event("checkpoint", round=self.round)
        return where

    def finish(self) -> dict[str, Any]:
        """Final evaluation (if the last round had none), checkpoint, summary.json, plots."""
        with self._writing():
            return self._finish()

    def _finish(self) -> dict[str, Any]:
        last = self.evaluations[-1] if self.evaluations else None
        if last is None or last["round"] != self.round:
            last = self.evaluate()
        if not checkpoint.verified(self.run, self.round):  # missing, or broken: repaired
            self._checkpoint()
        if self.center is None:
            raise RuntimeError("no round has run")
        final_rows = self.rows[-self.group.size :]
        summary = report.summary(self.config, self.round, last, final_rows, self.center,
                                 self.group.num_params, self.parts)  # fmt: skip
        summary["resumed_from"] = self.resumed_from
        summary["wall_seconds"] = time.time() - self.started
        self.run.write_json("summary.json", summary)
        center = self.center.numpy()
        state = self._surviving(lambda: self.group.center_state(center))
        self.run.write_bytes(CENTER_FILE, torch_bytes(state))
        self.run.write_bytes(
            "plots/training.png", report.training_plot(self.rows, self.evaluations)
        )
        self.run.event("finish", rounds=self.round, center_sha256=summary["center_sha256"])
        self.lease.release()  # the run's last write: the next run may begin
        return summary

    def shutdown(self) -> None:
        """Stop the replicas and give the run directory back (idempotent)."""
        try:
            self.group.shutdown()
        finally:
            self.lease.release()
