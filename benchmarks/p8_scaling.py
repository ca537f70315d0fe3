"""P8: round time and bytes through the coordinator, object store against collective.

On a local multi-node cluster (a head with 1 CPU and two worker nodes with 2 CPUs each,
every node its own `ray start` raylet on this one machine), for y = 2, 4, 8, 16
replicas spread over the worker nodes (packed p to an actor where y > 4, so that at
most 4 actors share the 4 worker CPUs), the MNIST-1D MLP (15k parameters) and a wide
MLP (1.1M), with both transports, side by side in one run: the transports alternate
for each (model, y).

K = 1 (one local step a round, so that the round is mostly its exchange) and only
ordinary rounds are counted: the evaluation and the checkpoint fall after them.
"Bytes through the coordinator" per round = what the coordinator process receives (the
pickled results of the round's calls: every replica's weights and statistics, or the
statistics alone) + what it sends (the center, inline in each unit's call below 64 KiB
or put once into the object store above, or nothing).

    python benchmarks/p8_scaling.py [--replicas 2 4 8 16] [--rounds 30] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
# Ray reads the auth mode when it is imported: the cluster's token (local_cluster writes
# it to <temp>/auth_token) must be named before that.
TEMP = Path(tempfile.mkdtemp(prefix="p8"))
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(TEMP / "auth_token"))

import numpy as np  # noqa: E402
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
from _timing import header  # noqa: E402
from torch import nn  # noqa: E402

from cluster.actors import INLINE_BYTES, RayReplicaGroup  # noqa: E402
from cluster.collective import CollectiveReplicaGroup  # noqa: E402
from coordinator.coordinator import Coordinator  # noqa: E402
from foundation.config import Config, load_config  # noqa: E402
from tests.support import local_cluster  # noqa: E402

WORKER_CPUS = 4
MODELS = {"mlp": "mlp", "wide": "p8_scaling:WideMLP"}
PREDICT_Y = (16, 64, 256, 1024)
PREDICT_BYTES = (4e6, 1e8, 1e9)  # a 1M-, 25M- and 250M-parameter float32 model
NETWORKS = (("10 Gb/s", 1.25e9), ("100 Gb/s", 12.5e9))


class WideMLP(nn.Sequential):
    """40 → 1024 → 1024 → 10: the MNIST-1D MLP made 70× larger (1.09M parameters)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        width = 1024
        super().__init__(
            nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes),
        )  # fmt: skip


class Counted:
    """Mixed into a group: counts the bytes the coordinator receives and sends."""

    received = 0
    sent = 0

    def _call(self, method: Any, timeout: float, units: list[int] | None = None) -> list[Any]:
        out: list[Any] = super()._call(method, timeout, units)  # type: ignore[misc]
        self.received += sum(len(ray.cloudpickle.dumps(o)) for o in out)
        return out

    def run_round(self, center: np.ndarray | None, gamma: float, rho: float) -> list[Any]:
        if center is not None:  # inline in each unit's call, or one put
            units = len(self.units_of)  # type: ignore[attr-defined]
            self.sent += center.nbytes * (units if center.nbytes < INLINE_BYTES else 1)
        out: list[Any] = super().run_round(center, gamma, rho)  # type: ignore[misc]
        return out


class CountedGather(Counted, RayReplicaGroup):
    pass


class CountedCollective(Counted, CollectiveReplicaGroup):
    pass


def config(model: str, y: int, transport: str, rounds: int, storage: str) -> Config:
    units = min(y, WORKER_CPUS)
    p = y // units
    arch = MODELS[model]
    return load_config(None, [
        f"run.storage={storage}", f"run.name={model}-{y}-{transport}", "algorithm.kind=rsgd",
        f"algorithm.replicas={y}", "algorithm.coupling_period=1", f"model.arch={arch}",
        f"train.rounds={rounds + 1}", f"train.eval_every={rounds + 1}",
        "train.checkpoint_every=0", f"resources.replicas_per_actor={p}",
        f"resources.cpus_per_replica={1 / p:g}", "resources.placement=spread",
        f"resources.transport={transport}", "data.root=data",
    ])  # fmt: skip


def measure(cfg: Config) -> dict[str, float]:
    """Medians over the ordinary rounds: the round, and its exchange (the round less the
    slowest replica's local steps); the mean bytes through the coordinator per round."""
    counted = CountedCollective if cfg.resources.transport == "collective" else CountedGather
    coordinator = Coordinator(cfg, counted, fresh=True)
    group: Any = coordinator.group
    rounds, exchanges = [], []
    try:
        coordinator.step()  # the first round: start-up effects, calibration
        group.received = group.sent = 0
        for _ in range(cfg.train.rounds - 2):
            seconds = coordinator.step()["seconds"]
            local = max(r["step_seconds"] + r["coupling_seconds"]
                        for r in coordinator.rows[-cfg.algorithm.replicas :])  # fmt: skip
            rounds.append(seconds)
            exchanges.append(max(0.0, seconds - local))
        moved = (group.received + group.sent) / len(rounds)
        coordinator.step()  # the last round evaluates: not counted
        coordinator.finish()
    finally:
        coordinator.shutdown()
    return {"round_ms": 1000 * statistics.median(rounds),
            "exchange_ms": 1000 * statistics.median(exchanges), "bytes": moved,
            "params": group.num_params}  # fmt: skip


def features(transport: str, y: float, size: float) -> list[float]:
    """The cost model's terms: a fixed cost, one per replica (star: the coordinator
    handles y messages one after another; ring: 2(y − 1) hops), and the bytes that
    cross the busiest link (star: y·S into the coordinator; ring: 2(y − 1)/y·S)."""
    if transport == "object_store":
        return [1.0, y, y * size]
    return [1.0, 2 * (y - 1), 2 * (y - 1) / y * size]


def fit(points: list[tuple[str, int, float, float]]) -> dict[str, np.ndarray]:
    """Non-negative least squares of the exchange time (s) on features(), per transport
    (a cost is never negative): the best fit over every subset of the three terms whose
    coefficients all come out ≥ 0."""
    out = {}
    for transport in ("object_store", "collective"):
        mine = [(y, size, t) for tr, y, size, t in points if tr == transport]
        a = np.array([features(transport, y, size) for y, size, _ in mine])
        b = np.array([t for _, _, t in mine])
        best, best_error = np.zeros(3), float(np.sum(b**2))
        for subset in itertools.product((False, True), repeat=3):
            cols = [i for i in range(3) if subset[i]]
            if not cols:
                continue
            coef = np.zeros(3)
            coef[cols] = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
            error = float(np.sum((a @ coef - b) ** 2))
            if (coef >= 0).all() and error < best_error:
                best, best_error = coef, error
        out[transport] = best
    return out


def predict(coef: dict[str, np.ndarray]) -> None:
    """Predicted exchange time: this box's fitted fixed and per-replica costs, with the
    bytes moved at a stated network bandwidth instead of the fitted one."""
    print("\nfitted (exchange s = c0 + c1·n + bytes/B):")
    for transport, (c0, c1, per_byte) in coef.items():
        bandwidth = 1 / per_byte if per_byte > 0 else float("inf")
        print(f"  {transport:12} c0 {1000 * c0:7.2f} ms  c1 {1000 * c1:6.3f} ms  "
              f"B {bandwidth / 1e9:6.2f} GB/s")  # fmt: skip
    print("\nPREDICTED exchange time per round (s), not measured:")
    print(f"  {'network':>9} {'model':>8} " + " ".join(f"{f'y={y}':>19}" for y in PREDICT_Y))
    for name, bandwidth in NETWORKS:
        for size in PREDICT_BYTES:
            cells = []
            for y in PREDICT_Y:
                t = {tr: c[0] + c[1] * features(tr, y, size)[1] + features(tr, y, size)[2]
                     / bandwidth for tr, c in coef.items()}  # fmt: skip
                win = "coll" if t["collective"] < t["object_store"] else "os"
                cells.append(f"{t['object_store']:8.3g}/{t['collective']:<8.3g}{win:>3}")
            print(f"  {name:>9} {size / 1e6:>6g}MB " + " ".join(cells))
    print("  (each cell: object_store / collective seconds, and which is faster)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    header("P8: round time and bytes through the coordinator, object store vs collective",
           {"replicas": args.replicas, "rounds": args.rounds, "models": args.models,
            "cluster": "head 1 CPU + 2 worker nodes × 2 CPUs, one machine"})  # fmt: skip
    temp = str(TEMP)
    with local_cluster(TEMP) as nodes:
        paths = os.pathsep.join(sys.path[:2])
        ray.init(address=nodes.gcs, runtime_env={"env_vars": {"PYTHONPATH": paths}},
                 log_to_driver=False)  # fmt: skip
        print(f"{'model':6} {'y':>3} {'transport':12} {'round ms':>9} {'exchange ms':>11} "
              f"{'bytes/round':>12}")  # fmt: skip
        points = []
        for model in args.models:
            for y in args.replicas:
                for transport in ("object_store", "collective"):
                    cfg = config(model, y, transport, args.rounds, f"{temp}/runs")
                    r = measure(cfg)
                    size = 4.0 * r["params"]  # float32
                    points.append((transport, y, size, r["exchange_ms"] / 1000))
                    print(f"{model:6} {y:>3} {transport:12} {r['round_ms']:9.1f} "
                          f"{r['exchange_ms']:11.1f} {r['bytes']:12,.0f}", flush=True)  # fmt: skip
        predict(fit(points))
        ray.shutdown()
    shutil.rmtree(TEMP, ignore_errors=True)


if __name__ == "__main__":
    main()
