"""The Coordinator: the round loop of one run (a plain class; a Ray actor at run time).

Each round: send the center (or nothing) with γ and ρ to every replica, gather one flat
buffer per replica, refuse non-finite results, form the new center (the mean, or
EASGD's explicit w̃), advance the scoping schedules, record one metrics row per
replica, and every E rounds evaluate the center, the replicas and their ensemble.
The replicas sit behind a ReplicaGroup: in-process objects here (LocalGroup), Ray
actors in cluster/actors.py, so tests step this class without a cluster.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from coordinator import coupling
from coordinator.rundir import RunDir
from coordinator.scoping import Scope
from coordinator.transport import stack_weights
from jobs.config import Config, to_toml
from replicas.replica import Replica, RoundStats

RoundResults = list[tuple[np.ndarray, RoundStats]]


class DivergenceError(RuntimeError):
    """A replica's loss or weights became NaN or infinite."""


class ReplicaGroup(Protocol):
    size: int
    num_params: int

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> RoundResults: ...

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]: ...

    def shutdown(self) -> None: ...


GroupFactory = Callable[[Config], ReplicaGroup]


class LocalGroup:
    """Replicas as plain objects in this process, stepped one after another."""

    def __init__(self, config: Config) -> None:
        self.replicas = [Replica(i, config) for i in range(config.algorithm.replicas)]
        self.size = len(self.replicas)
        self.num_params = self.replicas[0].num_params

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> RoundResults:
        out = []
        for replica in self.replicas:
            weights, stats = replica.round(center, gamma, rho)
            out.append((weights.copy(), stats))  # the replica keeps training its buffer
        return out

    def evaluate(self, center: np.ndarray) -> list[dict[str, Any]]:
        return [r.evaluate(center if i == 0 else None) for i, r in enumerate(self.replicas)]

    def shutdown(self) -> None:
        self.replicas.clear()


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


class Coordinator:
    def __init__(self, config: Config, group_factory: GroupFactory) -> None:
        self.config = config
        self.run = RunDir(config.run.storage, config.run.name)
        self.run.write_text("config.toml", to_toml(config))
        self.gamma, self.rho = make_scopes(config)
        self.group = group_factory(config)
        self.round = 0
        self.center: Tensor | None = None
        self.sent_center: np.ndarray | None = None  # what the replicas pull toward next round
        self.rows: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []
        self.last_finite_loss = [math.nan] * self.group.size
        self.started = time.time()
        self.run.event("start", replicas=self.group.size, algorithm=config.algorithm.kind)

    @property
    def done(self) -> bool:
        return self.round >= self.config.train.rounds

    def step(self) -> dict[str, Any]:
        """Run one round; returns a short progress record for the driver to print."""
        r, gamma, rho = self.round, self.gamma.value(), self.rho.value()
        started = time.perf_counter()
        results = self.group.run_round(self.sent_center, gamma, rho)
        gathered = time.perf_counter()
        stats = [s for _, s in results]
        self._refuse_divergence(r, stats)
        weights = stack_weights([w for w, _ in results])
        distances = self._update_center(weights)
        losses = [s.train_loss for s in stats]
        if r == 0:
            half_sq = float((distances**2).mean()) / 2
            self.gamma.calibrate(float(np.mean(losses)), half_sq)
        self._record(
            r, gamma, rho, stats, distances, gathered - started, time.perf_counter() - gathered
        )
        self.round += 1
        self.gamma.step()
        self.rho.step()
        progress: dict[str, Any] = {
            "round": r + 1,
            "gamma": gamma,
            "mean_loss": float(np.mean(losses)),
            "mean_distance": float(distances.mean()),
            "seconds": time.perf_counter() - started,
        }
        if self.round % self.config.train.eval_every == 0 or self.done:
            progress["center_test_accuracy"] = self.evaluate()["center"]["test_accuracy"]
        return progress

    def _refuse_divergence(self, r: int, stats: list[RoundStats]) -> None:
        for a, s in enumerate(stats):
            if not s.finite:
                self.run.event(
                    "divergence", round=r, replica=a, last_finite_loss=self.last_finite_loss[a]
                )
                self._save_metrics()
                raise DivergenceError(
                    f"replica {a} diverged in round {r} (loss {s.train_loss}); "
                    f"its last finite loss was {self.last_finite_loss[a]:.6g}"
                )
            self.last_finite_loss[a] = s.train_loss

    def _update_center(self, weights: Tensor) -> Tensor:
        """New center from the gathered [y, n] weights; returns ‖w^a − center‖ per replica."""
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
        return coupling.squared_distances(weights[:, :p], self.center[:p]).sqrt()

    def _record(
        self, r: int, gamma: float, rho: float, stats: list[RoundStats], distances: Tensor,
        round_s: float, center_s: float,
    ) -> None:  # fmt: skip
        for a, s in enumerate(stats):
            self.rows.append({
                "round": r, "replica": a, "train_loss": s.train_loss,
                "distance_to_center": float(distances[a]), "gamma": gamma, "rho": rho,
                "lr": self.config.algorithm.lr, "step_seconds": s.step_seconds,
                "coupling_seconds": s.coupling_seconds, "round_seconds": round_s,
                "center_seconds": center_s, "test_accuracy": None,
                "center_test_accuracy": None, "ensemble_test_accuracy": None,
            })  # fmt: skip

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

    def finish(self) -> dict[str, Any]:
        """Final evaluation (if the last round had none), summary.json, plots."""
        if self.center is None:
            raise RuntimeError("no round has run")
        last = self.evaluations[-1] if self.evaluations else None
        if last is None or last["round"] != self.round:
            last = self.evaluate()
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
            "mean_distance_to_center": float(
                np.mean([r["distance_to_center"] for r in final_rows])
            ),
            "final_gamma": final_rows[0]["gamma"],
            "center_sha256": center_sha256(self.center, self.group.num_params)
            if self.center is not None
            else "",
            "wall_seconds": time.time() - self.started,
        }

    def _final_center(self) -> Tensor:
        if self.center is None:
            raise RuntimeError("no round has run")
        return self.center

    def _plot(self) -> None:
        from jobs.plots import training_curves  # matplotlib only where plots are drawn

        training_curves(self.rows, self.evaluations, self.run.path / "plots" / "training.png")

    def shutdown(self) -> None:
        self.group.shutdown()
