"""A module's parameters and floating-point buffers as ONE contiguous flat vector.

FlatModule moves every parameter, and every floating-point buffer (BatchNorm's
running mean and variance), into a single float buffer laid out as
[parameters | float buffers], and rebinds the module's tensors as views of it. The
flat vector then IS the model: coupling updates act on it with no copy, and sending a
replica's weights is sending one buffer. Gradients get the same treatment, so the
flat gradient is read without a torch.cat per step.

Integer buffers (BatchNorm's num_batches_tracked) are not part of the vector: they are
counters, not weights, and a float view of an int64 would not be bit-exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Slot:
    """Where one named tensor lives in the flat vector."""

    owner: nn.Module
    attr: str
    name: str
    shape: torch.Size
    offset: int
    numel: int
    is_param: bool


def _float_tensors(module: nn.Module) -> list[tuple[str, nn.Module, str, Tensor, bool]]:
    """(full name, owning submodule, attribute, tensor, is_param), parameters first."""
    found: list[tuple[str, nn.Module, str, Tensor, bool]] = []
    seen: set[int] = set()  # a tied parameter is one weight: give it one slot
    for prefix, sub in module.named_modules():
        for attr, p in sub.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                found.append((f"{prefix}.{attr}".lstrip("."), sub, attr, p, True))
    for prefix, sub in module.named_modules():
        for attr, b in sub.named_buffers(recurse=False):
            if b.is_floating_point():
                found.append((f"{prefix}.{attr}".lstrip("."), sub, attr, b, False))
    return found


class FlatModule:
    """Owns a module whose float parameters and buffers are views into `self.flat`."""

    def __init__(self, module: nn.Module) -> None:
        tensors = _float_tensors(module)
        if not tensors:
            raise ValueError("module has no floating-point parameters or buffers")
        dtypes = {t.dtype for *_, t, _ in tensors}
        devices = {t.device for *_, t, _ in tensors}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"one dtype and device expected, got {dtypes} on {devices}")
        self.module = module
        total = sum(t.numel() for *_, t, _ in tensors)
        self.flat = torch.empty(total, dtype=tensors[0][3].dtype, device=tensors[0][3].device)
        self.grad = torch.zeros_like(self.flat)
        self.slots: list[Slot] = []
        offset = 0
        for name, owner, attr, tensor, is_param in tensors:
            slot = Slot(owner, attr, name, tensor.shape, offset, tensor.numel(), is_param)
            self.slots.append(slot)
            self._rebind(slot, tensor)
            offset += tensor.numel()
        self.num_params = sum(s.numel for s in self.slots if s.is_param)

    def _view(self, buffer: Tensor, slot: Slot) -> Tensor:
        return buffer[slot.offset : slot.offset + slot.numel].view(slot.shape)

    def _rebind(self, slot: Slot, tensor: Tensor) -> None:
        view = self._view(self.flat, slot)
        with torch.no_grad():
            view.copy_(tensor)
        if slot.is_param:
            param = getattr(slot.owner, slot.attr)
            param.data = view
            # Autograd accumulates into an existing .grad in place, so this view stays
            # the gradient's home as long as gradients are zeroed, not set to None.
            param.grad = self._view(self.grad, slot)
        else:
            slot.owner._buffers[slot.attr] = view

    def adopt_(self, storage: Tensor) -> None:
        """Move the vector into `storage` (e.g. one row of a packed [p, n] block) and
        re-view every parameter and buffer there; values are kept."""
        if storage.shape != self.flat.shape:
            raise ValueError(f"storage of {tuple(storage.shape)} != {tuple(self.flat.shape)}")
        with torch.no_grad():
            storage.copy_(self.flat)
        old, self.flat = self.flat, storage
        for slot in self.slots:
            self._rebind(slot, self._view(old, slot))

    @property
    def params(self) -> Tensor:
        """The parameter part of the flat vector (a view): what gradients and coupling move."""
        return self.flat[: self.num_params]

    @property
    def param_grad(self) -> Tensor:
        return self.grad[: self.num_params]

    def zero_grad(self) -> None:
        self.grad.zero_()

    def load_(self, vector: Tensor) -> None:
        """Copy a whole flat vector (parameters and float buffers) into the module."""
        if vector.shape != self.flat.shape:
            raise ValueError(f"flat vector of {tuple(vector.shape)} != {tuple(self.flat.shape)}")
        with torch.no_grad():
            self.flat.copy_(vector)

    def names(self) -> list[str]:
        return [s.name for s in self.slots]


def read_flat(tensors: Sequence[Tensor]) -> Tensor:
    """A detached copy of the tensors, concatenated into one flat vector."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def write_flat_(tensors: Sequence[Tensor], vector: Tensor) -> None:
    """Copy a flat vector into the tensors' own storage, in order (no rebinding: the
    module keeps its tensors, and the copy is bit-exact)."""
    expected = sum(t.numel() for t in tensors)
    if vector.numel() != expected:
        raise ValueError(f"vector has {vector.numel()} values, the model needs {expected}")
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(vector[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def flatten_state(module: nn.Module) -> Tensor:
    """A copy of a module's float parameters and buffers as one vector (FlatModule's layout)."""
    return read_flat([t for *_, t, _ in _float_tensors(module)])


def unflatten_state_(module: nn.Module, vector: Tensor) -> None:
    """Write a flatten_state vector back into the module's own tensors, in place."""
    write_flat_([t for *_, t, _ in _float_tensors(module)], vector)


def readonly_tensor(array: np.ndarray) -> Tensor:
    """A tensor over a (possibly read-only, object-store backed) array, without a copy.

    torch warns about non-writable arrays because writing through the tensor would be
    undefined; callers here only read it (the center is pulled toward, never changed).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))
