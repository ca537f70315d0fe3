"""Several replicas in one process and on one device, stepped together.

NCCL cannot join two actors on one GPU, and stepping replicas one after another (what
the reference code does) leaves a GPU mostly idle. PackedReplicas keeps p Replica
objects whose flat vectors and momentum buffers are the rows of two [p, n] blocks, and
runs their local steps (replicas/unit.py's, on the block's rows) as ONE forward over
the stacked weights with one backward: each row gets exactly its own gradient, since
replica a's loss depends on row a alone.
The forward is replicas/packed_forward.py's batched kernels when the model is a plain
Sequential of the layers written there, and torch.func's vmap otherwise. Everything
per replica (data stream, SGLD noise, lr scale, evaluation, state) stays in its own
Replica, so the numbers match unpacked runs to float tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from foundation.config import Config
from foundation.data import Dataset
from foundation.fields import ConfigError
from foundation.parts import InMemoryData, Parts
from replicas.packed_forward import compile_packed
from replicas.replica import Replica, RoundStats
from replicas.unit import Unit


class PackedReplicas(Unit[list[RoundStats]]):
    def __init__(
        self,
        indices: list[int],
        config: Config,
        device: str = "cpu",
        threads: int = 0,
        force_vmap: bool = False,  # tests and benchmarks/p2_packed.py compare both forwards
        parts: Parts | None = None,
    ) -> None:
        # One copy of the data for all members (p copies would cost p × a CIFAR-10).
        first = Replica(indices[0], config, device, threads, parts=parts)
        self.parts = first.parts
        self.members = [first] + [
            Replica(i, config, device, data=first.data, parts=first.parts) for i in indices[1:]
        ]
        self.config = config
        self.num_params = first.num_params
        self.block = torch.empty((len(indices), first.flat.flat.numel()), device=first.device)
        for row, member in enumerate(self.members):
            member.flat.adopt_(self.block[row])
        self.momentum: Tensor | None = None
        if first.momentum is not None:
            self.momentum = torch.zeros((len(indices), self.num_params), device=first.device)
            for row, member in enumerate(self.members):
                member.momentum = self.momentum[row]
        self._grad_block = torch.empty((len(indices), self.num_params), device=first.device)
        # num_batches_tracked of each member's BatchNorm layers that count in training.
        self._batch_counters = [
            [m.num_batches_tracked for m in member.model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.num_batches_tracked is not None]
            for member in self.members
        ]  # fmt: skip
        self.skeleton = first.model  # the architecture functional_call runs (weights given)
        self.slots = first.flat.slots
        # Batched kernels for a plain Sequential of common layers; vmap for anything else.
        kernels = None if force_vmap else compile_packed(self.skeleton)
        self.forward_kind = "vmap" if kernels is None else "batched kernels"
        self._forward = kernels or vmap(self._one_forward)

    def ready(self) -> dict[str, Any]:
        return self.members[0].ready()

    def pid(self) -> int:
        return self.members[0].pid()

    # ---- the packed step -----------------------------------------------------------

    def _one_forward(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        out: Tensor = functional_call(self.skeleton, {**params, **buffers}, (x,))
        return out

    def _views(self, block: Tensor, params: bool) -> dict[str, Tensor]:
        """Named [p, *shape] views into a [p, ·] block (parameters or float buffers)."""
        base = 0 if params else self.num_params
        p = block.shape[0]
        return {
            s.name: block[:, s.offset - base : s.offset - base + s.numel].view(p, *s.shape)
            for s in self.slots
            if s.is_param == params
        }

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """Per-row minibatch losses [p] and the [p, n_params] gradient block."""
        # Every member's own minibatch, gathered at once from the shared data: [p, B, ...].
        rows = torch.stack([m.stream.next_index() for m in self.members])
        x, y = self.members[0].data.train.x[rows], self.members[0].data.train.y[rows]
        # Each parameter is its own leaf (a view of the block): differentiating through
        # slices of one [p, n] leaf would fill a zero [p, n] tensor per parameter.
        params = {
            name: view.detach().requires_grad_(True)
            for name, view in self._views(self.block[:, : self.num_params], params=True).items()
        }
        # BatchNorm updates its running statistics in place only when each is a
        # contiguous tensor: step contiguous copies and write them back.
        views = self._views(self.block[:, self.num_params :], params=False)
        buffers = {name: view.contiguous() for name, view in views.items()}
        counted = [c.clone() for c in self._batch_counters[0]]
        with torch.enable_grad():
            logits = self._forward(params, buffers, x)
            losses = self._row_losses(logits, y)
            # A parameter that does not reach the loss gets a zero gradient, as alone.
            grads = torch.autograd.grad(
                losses.sum(), list(params.values()), allow_unused=True, materialize_grads=True
            )
        self._count_batch(counted)
        with torch.no_grad():
            grad = self._grad_block
            for slot_grad, view in zip(grads, self._views(grad, params=True).values(), strict=True):
                view.copy_(slot_grad)
            for name, view in views.items():
                view.copy_(buffers[name])
        return losses.detach(), grad

    def _row_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's minibatch loss, [p]: cross entropy over all rows at once, any
        other loss (a batch mean, as the user wrote it) member by member."""
        if self.parts.classifies:
            losses = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none")
            return losses.view(len(self.members), -1).mean(dim=1)
        return torch.stack([self.parts.loss(o, t) for o, t in zip(outputs, targets, strict=True)])

    def _count_batch(self, before: list[Tensor]) -> None:
        """Every member's BatchNorm layers saw one more batch, as in a lone replica's step.

        vmap's functional_call counts on the skeleton (member 0) alone and the batched
        kernels count on none, so the skeleton's counters are put back first.
        """
        with torch.no_grad():
            for counter, value in zip(self._batch_counters[0], before, strict=True):
                counter.copy_(value)
            for counters in self._batch_counters:
                for counter in counters:
                    counter.add_(1)

    # ---- one round: replicas/unit.py's, for all rows at once --------------------------

    @property
    def params(self) -> Tensor:
        return self.block[:, : self.num_params]

    def rate(self, base: float) -> Tensor:
        scales = [m.lr_scale for m in self.members]
        return torch.tensor(scales, device=self.block.device).unsqueeze(1) * base

    def noise(self) -> list[torch.Generator]:
        return [m.noise() for m in self.members]

    def center_params(self, center: np.ndarray) -> Tensor:
        return self.members[0].center_params(center)

    def pull(self, kind: str, center: np.ndarray, gamma: float, params: Tensor) -> None:
        for member in self.members:
            member.pull(kind, center, gamma, params)

    def sgd_loss(self, total: Tensor, steps: int) -> Tensor:
        return total / steps

    def entropy_loss(self, total: float, outer: int, inner: list[Tensor]) -> Tensor:
        return torch.stack(inner).mean(dim=0)

    def report(
        self, loss: float | Tensor, step_s: float, coupling_s: float
    ) -> tuple[np.ndarray, list[RoundStats]]:
        losses = torch.as_tensor(loss)
        finite = torch.isfinite(self.block).all(dim=1) & torch.isfinite(losses)
        stats = [
            RoundStats(float(losses[a]), step_s, coupling_s, bool(finite[a]),
                       (m.stream.epoch, m.stream.offset))
            for a, m in enumerate(self.members)
        ]  # fmt: skip
        return self.block.detach().cpu().numpy(), stats

    # ---- per-replica services, delegated ---------------------------------------------

    def evaluate(self, center: np.ndarray | None = None) -> list[dict[str, Any]]:
        return [m.evaluate(center if row == 0 else None) for row, m in enumerate(self.members)]

    def center_state(self, center: np.ndarray) -> dict[str, Any]:
        return self.members[0].center_state(center)

    def state_dict(self) -> list[dict[str, Any]]:
        return [m.state_dict() for m in self.members]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for member, state in zip(self.members, states, strict=True):
            member.load_state_dict(state)

    def load_member_state(self, row: int, state: dict[str, Any]) -> None:
        self.members[row].load_state_dict(state)


def check_packable(parts: Parts, config: Config, data: Dataset) -> None:
    """With resources.replicas_per_actor > 1, step two packed replicas once: a model that
    neither the batched kernels nor vmap can step fails here, with one line."""
    p = config.resources.per_actor()
    if p == 1:
        return
    local = dataclasses.replace(parts, data=InMemoryData(data))  # already held out
    whole = dataclasses.replace(config, data=dataclasses.replace(config.data, validation=0.0))
    try:
        PackedReplicas([0, 1], whole, parts=local).loss_and_grad()
    except Exception as err:
        first = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"resources.replicas_per_actor = {p}: model.arch = {config.model.arch!r} cannot be "
            f"packed ({type(err).__name__}: {first}); use resources.replicas_per_actor = 1"
        ) from None
