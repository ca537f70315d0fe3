"""One replica's life: its model, local optimizer state and its own data stream.

Replica is a plain class; cluster/actors.py makes it a Ray actor where it is created,
and tests drive it in-process. It is a unit of one (replicas/unit.py): one call to
round() is one round, the coupling from the coordinator first, then the local steps,
and back comes ONE flat buffer plus small stats. This class says what a lone replica's
parameters, minibatch gradient and report are; it also keeps the replica's state and
evaluates it (and the center).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flatmath import coupling
from flatmath.flat import FlatModule, readonly_tensor
from foundation.config import Config
from foundation.data import Dataset, Split
from foundation.evaluation import EVAL_TRAIN_SAMPLES, load_vector_, metrics
from foundation.parts import Parts
from replicas.stream import BatchStream
from replicas.unit import Unit


def replica_seed(seed: int, index: int) -> int:
    """Independent, reproducible seeds per (run seed, replica index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclass(frozen=True)
class RoundStats:
    train_loss: float
    """Mean minibatch loss over the round's local (or inner) steps."""
    step_seconds: float
    coupling_seconds: float
    finite: bool
    position: tuple[int, int] = (0, 0)
    """The data stream's (epoch, offset) after the round: where a replacement resumes."""


def model_identity(model: torch.nn.Module, flat: FlatModule) -> dict[str, Any]:
    """The model's class and the name and shape of every tensor of its flat vector, in
    order: two models that differ here cannot take each other's weights, even where
    their parameter counts agree (a checkpoint of one is refused for the other)."""
    cls = type(model)
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "num_params": flat.num_params,
        "tensors": [[slot.name, list(slot.shape)] for slot in flat.slots],
    }


class Replica(Unit[RoundStats]):
    def __init__(
        self,
        index: int,
        config: Config,
        device: str = "cpu",
        threads: int = 0,
        data: Dataset | None = None,  # the run's data on `device`, shared (packed members)
        parts: Parts | None = None,  # model, data, loss, metric; else from the config
    ) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.index = index
        self.config = config
        self.device = torch.device(device)
        if config.train.deterministic and self.device.type == "cuda":
            # The CPU kernels used here are deterministic at a fixed thread count already
            # (and this call costs a 1.3 s import); on GPUs it pins the nondeterministic
            # ones (warn_only: an op without a deterministic kernel warns, not fails).
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.seed = replica_seed(config.run.seed, index)
        # Import paths are resolved here, on this replica's node.
        self.parts = parts if parts is not None else Parts.from_config(config)
        self.data = data if data is not None else self._load_data()
        # DiLoCo and local SGD start every replica from the same weights (θ0).
        common = config.algorithm.kind in ("diloco", "localsgd")
        self.model = self._new_model(seed=replica_seed(config.run.seed, 0) if common else self.seed)
        self.flat = FlatModule(self.model)
        self.stream = BatchStream(
            self.data.train.x, self.data.train.y, config.data.batch_size, seed=self.seed
        )
        algo = config.algorithm
        self.momentum = torch.zeros_like(self.flat.params) if algo.momentum else None
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.lr_scale = 1.0  # halved each time this replica is restarted after diverging

    def _load_data(self) -> Dataset:
        data = self.parts.load_data(self.config)
        return Dataset(
            name=data.name,
            train=Split(data.train.x.to(self.device), data.train.y.to(self.device)),
            test=Split(data.test.x.to(self.device), data.test.y.to(self.device)),
            input_shape=data.input_shape,
            num_classes=data.num_classes,
        )

    def _new_model(self, seed: int) -> torch.nn.Module:
        return self.parts.new_model(self.data, seed).to(self.device).train()

    def ready(self) -> dict[str, Any]:
        """A cheap call that returns once the constructor has finished (data loaded):
        what identifies the model (model_identity), which a checkpoint records."""
        return model_identity(self.model, self.flat)

    def pid(self) -> int:
        return os.getpid()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: weights and buffers, momentum, the
        data position, the SGLD noise generator and the learning-rate scale."""
        return {
            "flat": self.flat.flat.detach().cpu().clone(),
            "int_buffers": {n: b.cpu().clone() for n, b in self._int_buffers()},
            "momentum": None if self.momentum is None else self.momentum.cpu().clone(),
            "noise": self.generator.get_state(),
            "stream": self.stream.state_dict(),
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.flat.load_(torch.as_tensor(state["flat"]).to(self.device))
            buffers = dict(self._int_buffers())
            for name, value in state.get("int_buffers", {}).items():
                buffers[name].copy_(value)
            if self.momentum is not None:
                saved = state.get("momentum")
                self.momentum.copy_(saved if saved is not None else torch.zeros_like(self.momentum))
        if state.get("noise") is not None:
            self.generator.set_state(state["noise"])
        self.stream.load_state_dict(state["stream"])
        self.lr_scale = float(state.get("lr_scale", 1.0))

    def _int_buffers(self) -> list[tuple[str, Tensor]]:
        return [(n, b) for n, b in self.model.named_buffers() if not b.is_floating_point()]

    @property
    def num_params(self) -> int:
        return self.flat.num_params

    def weights(self) -> np.ndarray:
        """A copy of the flat vector [parameters | float buffers] as float32 numpy."""
        return self.flat.flat.detach().to("cpu", copy=True).numpy()

    # ---- one round: replicas/unit.py's, for a unit of one ----------------------------

    @property
    def params(self) -> Tensor:
        return self.flat.params

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        x, y = self.stream.next()
        self.flat.zero_grad()
        with torch.enable_grad():  # the Entropy-SGD loop calls this from inside no_grad
            loss = self.parts.loss(self.model(x), y)
            loss.backward()
        return loss.detach(), self.flat.param_grad

    def rate(self, base: float) -> float:
        return base * self.lr_scale

    def noise(self) -> torch.Generator:
        return self.generator

    def center_params(self, center: np.ndarray) -> Tensor:
        vector = readonly_tensor(center).to(self.device)
        if vector.numel() != self.flat.flat.numel():
            raise ValueError(
                f"center has {vector.numel()} values, replica has {self.flat.flat.numel()}"
            )
        return vector[: self.flat.num_params]

    def pull(self, kind: str, center: np.ndarray, gamma: float, params: Tensor) -> None:
        algo = self.config.algorithm
        with torch.no_grad():
            if kind in ("diloco", "localsgd"):  # start the round from θ, buffers too
                self.flat.load_(readonly_tensor(center).to(self.device))
            elif kind == "rsgd":
                coupling.rsgd_pull_(self.flat.params, params, algo.lr, algo.coupling_period, gamma)
            elif kind == "easgd":  # this replica's half of the synchronous exchange, α = ηρ
                coupling.elastic_pull_(self.flat.params, params, algo.lr * gamma)

    def sgd_loss(self, total: Tensor, steps: int) -> float:
        return float(total) / steps

    def entropy_loss(self, total: float, outer: int, inner: list[Tensor]) -> float:
        return total / outer

    def report(
        self, loss: float | Tensor, step_s: float, coupling_s: float
    ) -> tuple[np.ndarray, RoundStats]:
        loss = float(loss)
        finite = math.isfinite(loss) and bool(torch.isfinite(self.flat.flat).all())
        position = (self.stream.epoch, self.stream.offset)
        # On CPU the weights are a view: Ray copies them into the object store when the
        # call returns, and in-process callers copy them (coordinator/groups.py).
        weights = self.flat.flat.detach().cpu().numpy()
        return weights, RoundStats(loss, step_s, coupling_s, finite, position)

    # ---- evaluation --------------------------------------------------------------

    def evaluate(self, center: np.ndarray | None = None) -> dict[str, Any]:
        """This replica's train/test loss and metric and its test outputs; with a center,
        the center's too (parameters and buffers loaded, BatchNorm statistics recomputed)
        and the test targets (for the ensemble)."""
        result = self._report(self.model)
        if center is not None:
            result["center"] = self._report(self._center_model(center))
            result["test_targets"] = self.data.test.y.cpu().numpy()
        return result

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        """The center as a model file holds it: the state_dict (BatchNorm statistics
        recomputed, as evaluated) and what building the model again needs."""
        state = {k: v.detach().cpu() for k, v in self._center_model(center).state_dict().items()}
        shape, classes = list(self.data.input_shape), self.data.num_classes
        return {"state_dict": state, "input_shape": shape, "num_classes": classes}

    def _center_model(self, center: np.ndarray) -> torch.nn.Module:
        scratch = self._new_model(seed=0)
        batch, batches = self.config.data.batch_size, self.config.train.bn_batches
        load_vector_(scratch, readonly_tensor(center), self.data, center=True,
                     batch_size=batch, bn_batches=batches)  # fmt: skip
        return scratch

    def _report(self, model: torch.nn.Module) -> dict[str, Any]:
        """Loss and metric on test and on a prefix of train, named as the run reports
        them (test_accuracy with the accuracy metric, test_metric with a user's)."""
        loss, metric, name = self.parts.loss, self.parts.metric, self.parts.metric_name
        test_loss, test_metric, outputs = metrics(model, self.data.test, None, loss, metric)
        train_loss, train_metric, _ = metrics(
            model, self.data.train, EVAL_TRAIN_SAMPLES, loss, metric
        )
        report = {"test_loss": test_loss, "train_loss": train_loss,
                  "test_outputs": outputs.cpu().numpy()}  # fmt: skip
        if name is not None:
            report |= {f"test_{name}": test_metric, f"train_{name}": train_metric}
        return report
