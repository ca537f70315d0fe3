"""Evaluating a model: losses and accuracies in chunks, and BatchNorm statistics recomputed.

One copy of each, used by the replicas (every evaluation round), the flatness report and
the comparison job, so that "the center" means the same model everywhere: its averaged
parameters with BatchNorm running statistics recomputed on a fixed prefix of the training
data (averaged statistics do not belong to averaged weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flatmath.flat import unflatten_state_
from foundation.data import Dataset, Split

EVAL_CHUNK = 64  # evaluation forwards: 1000 ResNet-18 images at once cost ~1.3 GiB, 64 ~0.1 (P6)
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
    model: nn.Module, split: Split, limit: int | None = None
) -> tuple[float, float, Tensor]:
    """(mean loss, accuracy, class probabilities) of a model in eval mode on a split
    (its first `limit` rows); the model is back in train mode afterwards."""
    model.eval()
    x, y = (split.x[:limit], split.y[:limit]) if limit else (split.x, split.y)
    device = next(model.parameters()).device
    losses, correct, probs = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(x), EVAL_CHUNK):
            logits = model(x[start : start + EVAL_CHUNK].to(device))
            target = y[start : start + EVAL_CHUNK].to(device)
            losses += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
            probs.append(logits.softmax(1))
    model.train()
    return losses / len(x), correct / len(x), torch.cat(probs)


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
