"""The Coordinator: the round loop of one run (a plain class; a Ray actor at run time).

Each round: send the center (or nothing) with γ and ρ to every replica, gather one flat
buffer per replica, keep failed replicas out of the center (failures.py decides what
happens to them), form the new center (the mean, or EASGD's explicit w̃), advance the
scoping schedules, record one metrics row per replica, and every E rounds evaluate the
center, the replicas and their ensemble. The replicas sit behind a ReplicaGroup
(groups.py): in-process objects or Ray actors (cluster/actors.py), so tests step this
class without a cluster. Every C rounds (and at the end) a checkpoint; a new Coordinator
on the same run directory resumes from the newest good one (resume.py). The summary and
plots are report.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from coordinator import checkpoint, report
from coordinator.failures import FailurePolicy
from coordinator.groups import ReplicaGroup, ReplicaLost, RoundOutcome
from coordinator.resume import check_same_run, make_scopes, rescoped
from coordinator.rundir import RunDir
from flatmath import coupling
from flatmath.flat import readonly_tensor
from flatmath.scoping import Scope
from foundation.config import Config, to_dict, to_toml
from replicas.replica import RoundStats, replica_seed

GroupFactory = Callable[[Config], ReplicaGroup]


class Coordinator:
    def __init__(
        self,
        config: Config,
        group_factory: GroupFactory,
        *,
        fresh: bool = False,
        allow_changes: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.allow_changes = allow_changes
        self.run = RunDir(config.run.storage, config.run.name)
        if fresh:
            self.run.clear()
        self.gamma, self.rho = make_scopes(config)
        self.group = group_factory(config)
        self.round = 0
        self.center: Tensor | None = None
        self.sent_center: np.ndarray | None = None  # what the replicas pull toward next round
        self.rows: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.policy = FailurePolicy(self.group.size, config.train.on_divergence)
        self.started = time.time()
        self.resumed_from = self._resume()
        if self.resumed_from is None:
            self.run.write_text("config.toml", to_toml(config))
            self.run.event("start", replicas=self.group.size, algorithm=config.algorithm.kind)

    @property
    def done(self) -> bool:
        return self.round >= self.config.train.rounds

    def status(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "rounds": self.config.train.rounds,
            "resumed_from": self.resumed_from,
        }

    # ---- one round ---------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """Run one round; returns a short progress record for the driver to print."""
        r, gamma, rho = self.round, self.gamma.value(), self.rho.value()
        started = time.perf_counter()
        outcomes = self.group.run_round(self.sent_center, gamma, rho)
        gathered = time.perf_counter()
        failed = self._failures(r, outcomes)
        good = [a for a in range(self.group.size) if a not in failed]
        stats = {a: _good(outcomes[a])[1] for a in good}
        # Read-only views of what the object store returned: summed row by row, no stacking.
        weights = [readonly_tensor(_good(outcomes[a])[0]) for a in good]
        distances = dict(zip(good, self._update_center(weights).tolist(), strict=True))
        for a, reason in failed.items():
            self._restart(r, a, reason)
        losses = [stats[a].train_loss for a in good]
        if r == 0:
            half_sq = float(np.mean([d * d for d in distances.values()])) / 2
            self.gamma.calibrate(float(np.mean(losses)), half_sq)
        center_s = time.perf_counter() - gathered
        self._record(r, gamma, rho, stats, distances, failed, gathered - started, center_s)
        self.round += 1
        self.gamma.step()
        self.rho.step()
        progress: dict[str, Any] = {
            "round": self.round,
            "gamma": gamma,
            "mean_loss": float(np.mean(losses)),
            "mean_distance": float(np.mean(list(distances.values()))),
            "seconds": time.perf_counter() - started,
            "failed": sorted(failed),
        }
        if self.round % self.config.train.eval_every == 0 or self.done:
            progress["center_test_accuracy"] = self.evaluate()["center"]["test_accuracy"]
        every = self.config.train.checkpoint_every
        if every and self.round % every == 0 and not self.done:
            self.checkpoint()
            progress["checkpoint"] = True
        return progress

    def _failures(self, r: int, outcomes: list[RoundOutcome]) -> dict[int, str]:
        """The replicas lost or diverged this round (→ reason); stops the run if the
        failure policy says so."""
        failed, diverged = self.policy.classify(outcomes)
        for d in diverged:
            self.run.event(
                "divergence", round=r, replica=d.replica, loss=str(d.loss),
                last_finite_loss=d.last_finite_loss,
            )  # fmt: skip
        error = self.policy.decide(r, failed, diverged)
        if error is not None:
            self._stop(error)
        return failed

    def _stop(self, error: Exception) -> None:
        """Keep what was measured, then fail the run with one clear line."""
        self._save_metrics()
        self.run.event("stopped", reason=str(error))
        raise error

    def _restart(self, r: int, a: int, reason: str) -> None:
        """Replica a starts again from the new center, its data stream where it was."""
        assert self.center is not None
        seed = replica_seed(self.config.run.seed, a)
        self.group.replace(a, self.policy.restart_state(a, reason, self.center, seed))
        self.run.event(
            "replica_restarted", round=r, replica=a, reason=reason,
            lr_scale=self.policy.lr_scale[a],
        )  # fmt: skip

    def _update_center(self, weights: list[Tensor]) -> Tensor:
        """New center from the gathered weights; returns ‖w^a − center‖ per replica."""
        p = self.group.num_params
        if self.config.algorithm.kind == "easgd":
            if self.center is None:  # w̃ starts at the replicas' mean
                self.center = coupling.center(weights)
            old = self.center.clone()
            alpha = self.config.algorithm.lr * self.gamma.value()
            coupling.easgd_center_update_(self.center, weights, alpha)
            self.sent_center = old.numpy()  # each replica's half uses the same old w̃
        else:
            self.center = coupling.center(weights)
            coupled = self.config.algorithm.kind in ("rsgd", "parle")
            self.sent_center = self.center.numpy() if coupled else None
        return coupling.squared_distances(weights, self.center[:p]).sqrt()

    def _record(
        self, r: int, gamma: float, rho: float, stats: dict[int, RoundStats],
        distances: dict[int, float], failed: dict[int, str], round_s: float, center_s: float,
    ) -> None:  # fmt: skip
        for a in range(self.group.size):
            s = stats.get(a)
            self.rows.append({
                "round": r, "replica": a, "train_loss": s.train_loss if s else None,
                "distance_to_center": distances.get(a), "gamma": gamma, "rho": rho,
                "lr": self.config.algorithm.lr * self.policy.lr_scale[a],
                "step_seconds": s.step_seconds if s else None,
                "coupling_seconds": s.coupling_seconds if s else None,
                "round_seconds": round_s, "center_seconds": center_s,
                "failure": failed.get(a), "test_accuracy": None,
                "center_test_accuracy": None, "ensemble_test_accuracy": None,
            })  # fmt: skip

    # ---- evaluation, checkpoints, the end ----------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Evaluate center, replicas and their output ensemble; note it in the metrics."""
        assert self.center is not None, "evaluate after the first round"
        results = self.group.evaluate(self.center.numpy())
        probs = np.mean([res.pop("test_probs") for res in results], axis=0)
        labels = results[0].pop("test_labels")
        center = results[0].pop("center")
        center.pop("test_probs")
        record = {
            "round": self.round,
            "center": center,
            "replicas": results,
            "ensemble_test_accuracy": float((probs.argmax(1) == labels).mean()),
        }
        self.evaluations.append(record)
        for row in self.rows[-self.group.size :]:
            row["test_accuracy"] = results[row["replica"]]["test_accuracy"]
            row["center_test_accuracy"] = center["test_accuracy"]
            row["ensemble_test_accuracy"] = record["ensemble_test_accuracy"]
        self._save_metrics()
        return record

    def _save_metrics(self) -> None:
        if self.rows:
            self.run.write_table("metrics.parquet", self.rows)

    def checkpoint(self) -> str:
        """Save all that resuming at self.round needs (metrics first: they must cover it)."""
        self._save_metrics()
        sent = None if self.sent_center is None else readonly_tensor(self.sent_center).clone()
        state = {
            "round": self.round,
            "config": to_dict(self.config),
            "center": self.center,
            "sent_center": sent,
            "gamma": self.gamma.state_dict(),
            "rho": self.rho.state_dict(),
            **self.policy.state_dict(),
            "evaluations": self.evaluations,
            "replicas": self.group.states(),
        }
        where = checkpoint.save(
            self.run, self.round, state, keep=self.config.train.keep_checkpoints
        )
        self.run.event("checkpoint", round=self.round)
        return where

    def _resume(self) -> int | None:
        """Continue from the newest good checkpoint, if there is one; returns its round."""

        def corrupt(round_: int, why: str) -> None:
            self.run.event("checkpoint_skipped", round=round_, reason=why)

        found = checkpoint.load_latest(self.run, on_corrupt=corrupt)
        if found is None:
            return None
        round_, state = found
        now = to_dict(self.config)
        check_same_run(state["config"], now, self.run.path, self.allow_changes)
        self.round = round_
        self.center = state["center"]
        sent = state["sent_center"]
        self.sent_center = None if sent is None else sent.numpy()
        self.gamma = Scope.from_state_dict(state["gamma"])
        self.rho = Scope.from_state_dict(state["rho"])
        scoping_may_change = any(k.split(".")[0] == "scoping" for k in self.allow_changes)
        if scoping_may_change and state["config"]["scoping"] != now["scoping"]:
            self.gamma, self.rho = rescoped(self.config, self.gamma, self.rho)
        self.policy.load_state_dict(state)
        self.evaluations = list(state["evaluations"])
        self.group.load_states(state["replicas"])
        self.rows = [row for row in self.run.read_table("metrics.parquet") if row["round"] < round_]
        self.run.event("resume", round=round_)
        return round_

    def finish(self) -> dict[str, Any]:
        """Final evaluation (if the last round had none), checkpoint, summary.json, plots."""
        last = self.evaluations[-1] if self.evaluations else None
        if last is None or last["round"] != self.round:
            last = self.evaluate()
        if self.round not in checkpoint.rounds(self.run):
            self.checkpoint()
        if self.center is None:
            raise RuntimeError("no round has run")
        final_rows = self.rows[-self.group.size :]
        summary = report.summary(
            self.config, self.round, last, final_rows, self.center, self.group.num_params
        )
        summary["resumed_from"] = self.resumed_from
        summary["wall_seconds"] = time.time() - self.started
        self.run.write_json("summary.json", summary)
        self.run.write_bytes(
            "plots/training.png", report.training_plot(self.rows, self.evaluations)
        )
        self.run.event("finish", rounds=self.round, center_sha256=summary["center_sha256"])
        return summary

    def shutdown(self) -> None:
        self.group.shutdown()


def _good(outcome: RoundOutcome) -> tuple[np.ndarray, RoundStats]:
    assert not isinstance(outcome, ReplicaLost)
    return outcome
