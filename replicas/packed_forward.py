"""One forward pass of p replicas of a plain nn.Sequential, written with batched kernels.

torch.func's vmap runs any model over stacked weights, but on CPU its batching rules
cost more than they save for the small layers of our MNIST-1D models: 8 cnn1d replicas
packed with vmap step slower than the 8 stepped one after another
(benchmarks/p2_packed.py --force-vmap). A Sequential of the common layers can instead be
written directly as batched matrix products over the replica axis: Linear is one
baddbmm, Conv1d is an im2col and one baddbmm, BatchNorm normalizes p·C channels at
once. `compile_packed` returns that forward for a model made only of such layers, and
None for anything else, which then runs under vmap. Both give each replica exactly its
own function of its own row.

Activations are kept as [p, B, *features]: row a is replica a's minibatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Tensors = dict[str, Tensor]
Layer = Callable[[Tensor, Tensors], Tensor]


class PackedSequential:
    """forward(params, buffers, x): [p, B, *in] → [p, B, *out], from [p, *shape] weights.

    `params` and `buffers` map the model's own names ("1.weight") to stacked tensors;
    BatchNorm running statistics in `buffers` must be contiguous: they are updated in
    place, as nn.BatchNorm does in training mode.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers

    def __call__(self, params: Tensors, buffers: Tensors, x: Tensor) -> Tensor:
        weights = {**params, **buffers}
        for layer in self.layers:
            x = layer(x, weights)
        return x


# The modules written here. A subclass counts only if it keeps its base's forward, and
# no module may carry hooks: either would make the module compute something else.
PLAIN = (nn.Sequential, nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten, nn.Linear, nn.Conv1d,
         nn.BatchNorm1d)  # fmt: skip


def compile_packed(model: nn.Module) -> PackedSequential | None:
    """The batched forward of `model`, or None when it holds a layer not written here
    (or weights it does not own alone: tied, parametrized, or a module used twice)."""
    if _global_hooks():
        return None
    layers: list[Layer] = []
    reads: set[str] = set()
    last = False  # are the activations channels-last now (after a Conv1d)?
    for name, module in _leaves(model, ""):
        keeps_layout = isinstance(module, (nn.ReLU, nn.Identity, nn.Conv1d, nn.BatchNorm1d))
        if last and not keeps_layout:
            layers.append(_channels_first)
            last = False
        layer = _packed_layer(name, module, last) if _plain(module) else None
        if layer is None:
            return None
        layers.append(layer)
        last = last or isinstance(module, nn.Conv1d)
        reads |= {name + n for n in _float_names(module, recurse=False)}
    if last:
        layers.append(_channels_first)
    all_params = list(model.named_parameters(remove_duplicate=False))
    if len(all_params) != len(dict(model.named_parameters())):  # tied weights
        return None
    if reads != _float_names(model, recurse=True):
        return None
    return PackedSequential(layers)


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The leaf modules of nested plain Sequentials in call order, with their name
    prefixes; a module used twice comes twice, as Sequential.forward calls it twice."""
    if isinstance(module, nn.Sequential) and _plain(module):
        for name, child in module._modules.items():
            if child is not None:
                yield from _leaves(child, f"{prefix}{name}.")
    else:
        yield prefix, module


def _plain(module: nn.Module) -> bool:
    base = next((b for b in PLAIN if isinstance(module, b)), None)
    hooked = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
              module._backward_pre_hooks)  # fmt: skip
    return base is not None and type(module).forward is base.forward and not any(hooked)


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    hooks = (m._global_forward_hooks, m._global_forward_pre_hooks, m._global_backward_hooks,
             m._global_backward_pre_hooks)  # fmt: skip
    return any(hooks)


def _float_names(module: nn.Module, recurse: bool) -> set[str]:
    """Names of the parameters and float buffers: what the packed blocks hold."""
    params = {n for n, _ in module.named_parameters(recurse=recurse)}
    buffers = module.named_buffers(recurse=recurse)
    return params | {n for n, b in buffers if b.is_floating_point()}


def _channels_first(x: Tensor, _: Tensors) -> Tensor:
    """[p, B, L, C] → [p, B, C, L], as the model's own modules see a Conv1d's output."""
    return x.transpose(2, 3).contiguous()


def _packed_layer(prefix: str, module: nn.Module, last: bool) -> Layer | None:
    """The batched `module`; `last`: its input is channels-last ([p, B, L, C])."""
    if isinstance(module, (nn.ReLU, nn.Identity)):
        return (lambda x, _: F.relu(x)) if isinstance(module, nn.ReLU) else (lambda x, _: x)
    if isinstance(module, nn.Flatten):
        start, end = _shift(module.start_dim), _shift(module.end_dim)
        return lambda x, _: x.flatten(start, end)
    if isinstance(module, nn.Unflatten) and isinstance(module.dim, int):
        dim, sizes = _shift(module.dim), tuple(module.unflattened_size)
        return lambda x, _: x.unflatten(dim, sizes)
    if isinstance(module, nn.Linear):
        return _linear(prefix, module.bias is not None)
    if isinstance(module, nn.Conv1d):
        return _conv1d(prefix, module, last)
    if isinstance(module, nn.BatchNorm1d):
        return _batch_norm(prefix, module, last)
    return None


def _shift(dim: int) -> int:
    """A per-sample module's dim ([B, ...]) in the stacked tensor ([p, B, ...])."""
    return dim + 1 if dim >= 0 else dim


def _linear(prefix: str, has_bias: bool) -> Layer:
    def forward(x: Tensor, w: Tensors) -> Tensor:
        weight = w[prefix + "weight"]  # [p, out, in]
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # [p, B·…, in]
        if has_bias:
            out = torch.baddbmm(w[prefix + "bias"].unsqueeze(1), rows, weight.transpose(1, 2))
        else:
            out = torch.bmm(rows, weight.transpose(1, 2))
        return out.view(*x.shape[:-1], weight.shape[1])

    return forward


def _conv1d(prefix: str, conv: nn.Conv1d, last: bool) -> Layer | None:
    """Output channels-last, [p, B, L', C_out]: the matrix product's own layout. Made
    channels-first, it cost a copy forward and backward per layer, the largest share
    of the packed cnn1d step after the products (benchmarks/p2_packed.py --profile);
    ReLU, BatchNorm and the next Conv1d take it as it is, the others get it transposed
    once (compile_packed)."""
    if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):  # "same" / "valid": left to vmap
        return None
    (padding,), (stride,), (kernel,) = conv.padding, conv.stride, conv.kernel_size
    has_bias = conv.bias is not None

    def forward(x: Tensor, w: Tensors) -> Tensor:
        p, batch = x.shape[:2]
        weight = w[prefix + "weight"]  # [p, C_out, C_in, k]
        rows = _Windows.apply(x if last else x.transpose(2, 3), kernel, stride, padding)
        length = rows.shape[1] // batch  # rows: [p, B·L', C_in·k]
        columns = weight.flatten(2).transpose(1, 2)  # [p, C_in·k, C_out]
        if has_bias:
            out = torch.baddbmm(w[prefix + "bias"].unsqueeze(1), rows, columns)
        else:
            out = torch.bmm(rows, columns)
        return out.view(p, batch, length, -1)

    return forward


class _Windows(torch.autograd.Function):
    """im2col for 1-D convolution: [p, B, L, C] (channels-last, or a view of that
    shape) → [p, B·L', C·k], row (b, l) holding the window of output position l.
    Written out because the backward of Tensor.unfold was the largest cost after the
    matrix products in a profile of the packed cnn1d step; k strided adds into one
    zero tensor do the same.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
        windows = F.pad(x, (0, 0, padding, padding)).unfold(2, kernel, stride)  # [p,B,L',C,k]
        ctx.geometry = (x.shape, kernel, stride, padding, windows.shape[2])
        p, batch = x.shape[:2]
        return windows.reshape(p, batch * windows.shape[2], -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        shape, kernel, stride, padding, length = ctx.geometry
        p, batch, width, channels = shape
        per_tap = grad.reshape(p, batch, length, channels, kernel)
        # Into the unpadded input directly (a contiguous gradient: the ReLU backward
        # before this layer is several times slower on a strided one).
        x_grad = grad.new_zeros(p, batch, width, channels)
        for tap in range(kernel):
            # Output positions l whose tap reads input l·stride + tap − padding in [0, width).
            first = max(0, -(-(padding - tap) // stride))
            last = min(length - 1, (width - 1 + padding - tap) // stride)
            if first > last:
                continue
            start = first * stride + tap - padding
            stop = last * stride + tap - padding + 1
            taps = per_tap[:, :, first : last + 1, :, tap]  # [p, B, positions, C]
            x_grad[:, :, start:stop:stride] += taps
        return x_grad, None, None, None


def _batch_norm(prefix: str, bn: nn.BatchNorm1d, last: bool) -> Layer | None:
    if bn.momentum is None:  # a cumulative average needs num_batches_tracked: vmap it
        return None
    tracked, affine = bn.track_running_stats, bn.affine
    momentum, eps = bn.momentum, bn.eps

    def forward(x: Tensor, w: Tensors) -> Tensor:
        # Replica a's channel c becomes channel a·C + c of one batch: per-channel
        # statistics over (B, L) are then exactly each replica's own. Channels-last
        # [p, B, L, C] merges into [B·L, p·C] rows, the others into [B, p·C, …].
        p, batch = x.shape[:2]
        if last:
            merged = x.permute(1, 2, 0, 3).reshape(-1, p * x.shape[3])
        else:
            merged = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])
        out = F.batch_norm(
            merged,
            w[prefix + "running_mean"].view(-1) if tracked else None,
            w[prefix + "running_var"].view(-1) if tracked else None,
            w[prefix + "weight"].reshape(-1) if affine else None,
            w[prefix + "bias"].reshape(-1) if affine else None,
            training=bn.training or not tracked,
            momentum=momentum,
            eps=eps,
        )
        if last:
            return out.view(batch, x.shape[2], p, -1).permute(2, 0, 1, 3).contiguous()
        return out.view(batch, p, *x.shape[2:]).transpose(0, 1).contiguous()

    return forward
