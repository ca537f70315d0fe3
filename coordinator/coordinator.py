"""The Coordinator: the round loop of one run (a plain class; a Ray actor at run time).

Each round: send the center (or nothing) with γ and ρ to every replica, gather one flat
buffer per replica, refuse non-finite results, form the new center (the mean, or
EASGD's explicit w̃), advance the scoping schedules, record one metrics row per
replica, and every E rounds evaluate the center, the replicas and their ensemble.
The replicas sit behind a ReplicaGroup (coordinator/groups.py): in-process objects or
Ray actors (cluster/actors.py), so tests step this class without a cluster. A replica
that is lost or diverges never reaches the center: it restarts from the new center.
Every C rounds (and at the end) a checkpoint; a new Coordinator on the same run
directory resumes from the newest good one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from coordinator import checkpoint
from coordinator.groups import ReplicaGroup, ReplicaLost, RoundOutcome
from coordinator.rundir import RunDir
from flatmath import coupling
from flatmath.flat import readonly_tensor
from flatmath.scoping import Scope
from foundation.config import Config, to_dict, to_toml
from replicas.replica import RoundStats, replica_seed

GroupFactory = Callable[[Config], ReplicaGroup]


class DivergenceError(RuntimeError):
    """A replica's loss or weights became NaN or infinite (train.on_divergence = "stop")."""


class RunFailed(RuntimeError):
    """The run cannot go on: every replica failed in one round, or one keeps failing."""


class ResumeMismatch(ValueError):
    """The run directory holds a checkpoint of a differently configured run."""


MAX_CONSECUTIVE_FAILURES = 3
# A resumed run may change how long it trains and how it reports, not what it trains.
RESUMABLE_CHANGES = ("train", "logging", "run.name", "run.storage")


def make_scopes(config: Config) -> tuple[Scope, Scope]:
    """γ (the scope) and ρ (Parle's center pull) on the same schedule kind and horizon."""
    s, horizon = config.scoping, config.train.rounds
    gamma1 = None if s.gamma1 == "auto" else float(s.gamma1)
    gamma = Scope(
        kind=s.kind,
        gamma0=None if s.gamma0 == "auto" else float(s.gamma0),
        gamma1=gamma1,
        gamma_max=s.gamma_max,
        horizon=horizon,
    )
    rho = Scope(kind=s.kind, gamma0=s.rho0, gamma1=gamma1, gamma_max=s.rho_max, horizon=horizon)
    if config.algorithm.kind == "sgd":  # γ = 0: y independent replicas
        gamma = Scope(kind="constant", gamma0=0.0)
    return gamma, rho


def center_sha256(center: Tensor, num_params: int) -> str:
    """sha256 of the center's flat float32 parameter bytes: one name for one model."""
    return hashlib.sha256(
        center[:num_params].to(torch.float32).contiguous().numpy().tobytes()
    ).hexdigest()


def check_same_run(
    saved: dict[str, Any], now: dict[str, Any], where: str, allowed: tuple[str, ...] = ()
) -> None:
    """Refuse to resume a run directory with a config that trains something else.

    `allowed` names more keys (or sections) that may differ, e.g. the η and γ0 that
    Population Based Training perturbs when a trial takes over another's checkpoint.
    """
    for section, values in saved.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if {section, name} & {*RESUMABLE_CHANGES, *allowed}:
                continue
            current = now.get(section, {}).get(key)
            if current != value:
                raise ResumeMismatch(
                    f"{where} holds a run with {name} = {value!r}, not {current!r}: "
                    "use --fresh to start over, or another run.name"
                )


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
        y = self.group.size
        self.round = 0
        self.center: Tensor | None = None
        self.sent_center: np.ndarray | None = None  # what the replicas pull toward next round
        self.rows: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.last_finite_loss = [math.nan] * y
        self.lr_scale = [1.0] * y
        self.positions = [(0, 0)] * y  # each replica's data position after its last good round
        self.failures = [0] * y  # consecutive rounds each replica has failed
        self.started = time.time()
        self.resumed_from = self._resume()
        if self.resumed_from is None:
            self.run.write_text("config.toml", to_toml(config))
            self.run.event("start", replicas=y, algorithm=config.algorithm.kind)

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
        stats = {a: self._stats(outcomes[a]) for a in good}
        # Read-only views of what the object store returned: summed row by row, no stacking.
        weights = [readonly_tensor(self._weights(outcomes[a])) for a in good]
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

    @staticmethod
    def _stats(outcome: RoundOutcome) -> RoundStats:
        assert not isinstance(outcome, ReplicaLost)
        return outcome[1]

    @staticmethod
    def _weights(outcome: RoundOutcome) -> np.ndarray:
        assert not isinstance(outcome, ReplicaLost)
        return outcome[0]

    def _failures(self, r: int, outcomes: list[RoundOutcome]) -> dict[int, str]:
        """Replicas whose round must not reach the center: lost or diverged (→ reason)."""
        failed: dict[int, str] = {}
        for a, outcome in enumerate(outcomes):
            if isinstance(outcome, ReplicaLost):
                failed[a] = f"lost: {outcome.reason}"
            elif not outcome[1].finite:
                self._diverged(r, a, outcome[1])
                failed[a] = f"diverged (loss {outcome[1].train_loss})"
            else:
                self.last_finite_loss[a] = outcome[1].train_loss
                self.positions[a] = outcome[1].position
                self.failures[a] = 0
        if len(failed) == len(outcomes):
            self._stop(RunFailed(f"every replica failed in round {r}: {failed}"))
        for a in failed:
            self.failures[a] += 1
            if self.failures[a] >= MAX_CONSECUTIVE_FAILURES:
                self._stop(
                    RunFailed(f"replica {a} failed {self.failures[a]} rounds in a row: {failed[a]}")
                )
        return failed

    def _diverged(self, r: int, a: int, stats: RoundStats) -> None:
        last = self.last_finite_loss[a]
        self.run.event(
            "divergence", round=r, replica=a, loss=str(stats.train_loss), last_finite_loss=last
        )
        if self.config.train.on_divergence == "stop":
            self._stop(DivergenceError(
                f"replica {a} diverged in round {r} (loss {stats.train_loss}); "
                f"its last finite loss was {last:.6g}"
            ))  # fmt: skip

    def _stop(self, error: Exception) -> None:
        """Keep what was measured, then fail the run with one clear line."""
        self._save_metrics()
        self.run.event("stopped", reason=str(error))
        raise error

    def _restart(self, r: int, a: int, reason: str) -> None:
        """Replica a starts again from the new center, its data stream where it was."""
        assert self.center is not None
        if reason.startswith("diverged"):
            self.lr_scale[a] /= 2
        epoch, offset = self.positions[a]
        stream = {"seed": replica_seed(self.config.run.seed, a), "epoch": epoch, "offset": offset}
        state = {"flat": self.center.clone(), "momentum": None, "noise": None, "stream": stream,
                 "lr_scale": self.lr_scale[a]}  # fmt: skip
        self.group.replace(a, state)
        self.run.event(
            "replica_restarted", round=r, replica=a, reason=reason, lr_scale=self.lr_scale[a]
        )

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
                "lr": self.config.algorithm.lr * self.lr_scale[a],
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
        sent = None if self.sent_center is None else torch.from_numpy(self.sent_center.copy())
        state = {
            "round": self.round,
            "config": to_dict(self.config),
            "center": self.center,
            "sent_center": sent,
            "gamma": self.gamma.state_dict(),
            "rho": self.rho.state_dict(),
            "last_finite_loss": self.last_finite_loss,
            "lr_scale": self.lr_scale,
            "positions": [list(p) for p in self.positions],
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
        check_same_run(state["config"], to_dict(self.config), self.run.path, self.allow_changes)
        self.round = round_
        self.center = state["center"]
        sent = state["sent_center"]
        self.sent_center = None if sent is None else sent.numpy()
        self.gamma = Scope.from_state_dict(state["gamma"])
        self.rho = Scope.from_state_dict(state["rho"])
        scoping_may_change = any(k.split(".")[0] == "scoping" for k in self.allow_changes)
        if scoping_may_change and state["config"]["scoping"] != to_dict(self.config)["scoping"]:
            self._rescope()
        self.last_finite_loss = list(state["last_finite_loss"])
        self.lr_scale = list(state["lr_scale"])
        self.positions = [(int(e), int(o)) for e, o in state["positions"]]
        self.evaluations = list(state["evaluations"])
        self.group.load_states(state["replicas"])
        self.rows = [row for row in self.run.read_table("metrics.parquet") if row["round"] < round_]
        self.run.event("resume", round=round_)
        return round_

    def _rescope(self) -> None:
        """A changed (allowed) scoping config: the new schedule, at the round reached."""
        gamma, rho = make_scopes(self.config)
        gamma.round, rho.round = self.gamma.round, self.rho.round
        if gamma.gamma0 is None:  # "auto" keeps what the first round measured
            gamma.gamma0, gamma.gamma1 = self.gamma.gamma0, self.gamma.gamma1
        self.gamma, self.rho = gamma, rho

    def finish(self) -> dict[str, Any]:
        """Final evaluation (if the last round had none), checkpoint, summary.json, plots."""
        last = self.evaluations[-1] if self.evaluations else None
        if last is None or last["round"] != self.round:
            last = self.evaluate()
        if self.round not in checkpoint.rounds(self.run):
            self.checkpoint()
        summary = self._summary(last)
        self.run.write_json("summary.json", summary)
        self._plot()
        self.run.event("finish", rounds=self.round, center_sha256=summary["center_sha256"])
        return summary

    def _summary(self, last: dict[str, Any]) -> dict[str, Any]:
        algo = self.config.algorithm
        entropy = algo.kind in ("esgd", "parle")
        grads = self.round * algo.coupling_period * (algo.inner_steps if entropy else 1)
        final_rows = self.rows[-self.group.size :]
        distances = [
            r["distance_to_center"] for r in final_rows if r["distance_to_center"] is not None
        ]
        return {
            "run": self.config.run.name,
            "algorithm": algo.kind,
            "replicas": self.group.size,
            "rounds": self.round,
            "gradient_evaluations_per_replica": grads,
            "center_test_accuracy": last["center"]["test_accuracy"],
            "center_test_loss": last["center"]["test_loss"],
            "center_train_accuracy": last["center"]["train_accuracy"],
            "replica_test_accuracy": [r["test_accuracy"] for r in last["replicas"]],
            "replica_train_accuracy": [r["train_accuracy"] for r in last["replicas"]],
            "ensemble_test_accuracy": last["ensemble_test_accuracy"],
            "mean_distance_to_center": float(np.mean(distances)) if distances else None,
            "final_gamma": final_rows[0]["gamma"],
            "center_sha256": center_sha256(self._final_center(), self.group.num_params),
            "resumed_from": self.resumed_from,
            "wall_seconds": time.time() - self.started,
        }

    def _final_center(self) -> Tensor:
        if self.center is None:
            raise RuntimeError("no round has run")
        return self.center

    def _plot(self) -> None:
        from foundation.plots import training_curves  # matplotlib only where plots are drawn

        self.run.write_bytes("plots/training.png", training_curves(self.rows, self.evaluations))

    def shutdown(self) -> None:
        self.group.shutdown()
