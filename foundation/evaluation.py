"""Evaluating a model: losses and accuracies in chunks, and BatchNorm statistics recomputed.

One copy of each, used by the replicas (every evaluation round), the flatness report and
the comparison job, so that "the center" means the same model everywhere: its averaged
parameters with BatchNorm running statistics recomputed on a fixed prefix of the training
data (averaged statistics do not belong to averaged weights).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flatmath.flat import unflatten_state_
from foundation.data import Dataset, Split
from foundation.parts import LossFn, MetricFn, accuracy, as_float

EVAL_CHUNK = 64  # evaluation forwards in chunks: all test images of ResNet-18 at once take GiBs
EVAL_TRAIN_SAMPLES = 10_000  # train accuracy on a fixed prefix: enough to read a gap


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_batchnorm(model: nn.Module, x: Tensor, batch_size: int, batches: int) -> int:
    """Recompute BatchNorm running statistics on the first `batches` minibatches of x
    (a fixed set, so every call agrees); returns how many samples were used (0: no BN)."""
    if not has_batchnorm(model):
        return 0
    count = min(batches * batch_size, len(x))
    device = next(model.parameters()).device
    chunks = [x[i : i + batch_size].to(device) for i in range(0, count, batch_size)]
    torch.optim.swa_utils.update_bn(chunks, model)
    return count


def metrics(
    model: nn.Module,
    split: Split,
    limit: int | None = None,
    loss: LossFn = F.cross_entropy,
    metric: MetricFn | None = accuracy,
) -> tuple[float, float | None, Tensor]:
    """(mean loss, mean metric or None, outputs) of a model in eval mode on a split (its
    first `limit` rows), in chunks; the model is back in train mode afterwards. With the
    cross-entropy loss the outputs are class probabilities (what an ensemble averages),
    else the raw outputs. Cross entropy and accuracy are summed exactly per row; a
    user's loss or metric (a batch mean) is weighted by the chunk's size."""
    model.eval()
    x, y = (split.x[:limit], split.y[:limit]) if limit else (split.x, split.y)
    device = next(model.parameters()).device
    total_loss, total_metric, outputs = 0.0, 0.0, []
    with torch.no_grad():
        for start in range(0, len(x), EVAL_CHUNK):
            out = model(x[start : start + EVAL_CHUNK].to(device))
            target = y[start : start + EVAL_CHUNK].to(device)
            total_loss += _summed(loss, out, target)
            if metric is not None:
                total_metric += _summed(metric, out, target)
            outputs.append(out.softmax(1) if loss is F.cross_entropy else out)
    model.train()
    mean_metric = total_metric / len(x) if metric is not None else None
    return total_loss / len(x), mean_metric, torch.cat(outputs)


def _summed(fn: Callable[[Tensor, Tensor], Tensor | float], out: Tensor, target: Tensor) -> float:
    """The sum over the chunk's rows of a batch-mean function."""
    if fn is F.cross_entropy:
        return float(F.cross_entropy(out, target, reduction="sum"))
    if fn is accuracy:
        return float((out.argmax(1) == target).sum())
    return as_float(fn(out, target)) * len(target)


def load_vector_(
    model: nn.Module, vector: Tensor, data: Dataset, *, center: bool, batch_size: int,
    bn_batches: int,
) -> int:  # fmt: skip
    """Write a flat [parameters | float buffers] vector into a model; a center also gets
    its BatchNorm statistics recomputed. Returns the samples used for that (0: none)."""
    unflatten_state_(model, vector.to(next(model.parameters()).device))
    if not center:
        return 0
    return recompute_batchnorm(model, data.train.x, batch_size, bn_batches)
