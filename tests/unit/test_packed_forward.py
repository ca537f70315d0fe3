"""Tier 1: the batched forward of p replicas equals each replica's own nn.Module.

For each model: p copies with different weights, a different minibatch per copy; the
packed forward on the stacked weights must give each copy's logits, each copy's
gradient (one backward of the summed losses) and BatchNorm's running statistics.
"""

from collections.abc import Callable, Sequence
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.models import build_model
from replicas.packed_forward import compile_packed

P, BATCH = 3, 6


def conv_variety() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (2, 12)),
        nn.Conv1d(2, 4, 3, stride=1, padding=0, bias=False),
        nn.BatchNorm1d(4, affine=False),
        nn.ReLU(),
        nn.Sequential(nn.Conv1d(4, 3, 4, stride=3, padding=2), nn.Identity()),
        nn.BatchNorm1d(3, momentum=0.3, track_running_stats=False),
        nn.Flatten(start_dim=1, end_dim=-1),
        nn.Linear(12, 5, bias=False),
        nn.BatchNorm1d(5),
        nn.Linear(5, 2),
    )


def conv_edges() -> nn.Module:
    # Padding wider than the stride and than half the kernel: some taps read only zeros.
    return nn.Sequential(
        nn.Unflatten(1, (1, 24)),
        nn.Conv1d(1, 3, 2, stride=4, padding=3),
        nn.ReLU(),
        nn.Conv1d(3, 2, 5, stride=1, padding=4),
        nn.ReLU(),
        nn.Conv1d(2, 2, 3, stride=2, padding=0),
        nn.Flatten(),
        nn.Linear(10, 2),
    )


MODELS = {
    "mlp": lambda: build_model("mlp", (40,), 10),
    "cnn1d": lambda: build_model("cnn1d", (40,), 10),
    "conv-variety": conv_variety,
    "conv-edges": conv_edges,
}


def copies(make: Callable[[], nn.Module]) -> list[nn.Module]:
    torch.manual_seed(0)
    models = [make() for _ in range(P)]
    for model in models:  # non-trivial running statistics, different per copy
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5) if "var" in name else buffer.normal_()
    return models


def stacked(models: Sequence[nn.Module], buffers: bool) -> dict[str, Tensor]:
    named = (lambda m: m.named_buffers()) if buffers else (lambda m: m.named_parameters())
    names = [n for n, t in named(models[0]) if t.is_floating_point()]
    return {
        n: torch.stack([dict(named(m))[n].detach() for m in models]).contiguous() for n in names
    }


@pytest.mark.parametrize("name", MODELS)
def test_packed_forward_gives_each_replica_its_logits_gradient_and_statistics(name: str) -> None:
    models = copies(MODELS[name])
    forward = compile_packed(models[0])
    assert forward is not None
    inputs = 24 if name.startswith("conv-") else 40
    x, y = torch.randn(P, BATCH, inputs), torch.randint(0, 2, (P, BATCH))
    params = {n: t.requires_grad_(True) for n, t in stacked(models, buffers=False).items()}
    buffers = stacked(models, buffers=True)

    logits = forward(params, buffers, x)
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    losses.view(P, BATCH).mean(dim=1).sum().backward()

    for a, model in enumerate(models):
        own = model(x[a])
        torch.testing.assert_close(logits[a], own, rtol=0, atol=1e-5)
        F.cross_entropy(own, y[a]).backward()
        for n, param in model.named_parameters():
            assert param.grad is not None
            torch.testing.assert_close(
                cast(Tensor, params[n].grad)[a], param.grad, rtol=0, atol=1e-5
            )
        for n, buffer in model.named_buffers():
            if buffer.is_floating_point():
                torch.testing.assert_close(buffers[n][a], buffer, rtol=0, atol=1e-6)


def test_eval_mode_uses_the_running_statistics_and_leaves_them() -> None:
    models = copies(MODELS["cnn1d"])
    for model in models:
        model.eval()
    forward = compile_packed(models[0])
    assert forward is not None
    buffers = stacked(models, buffers=True)
    before = {n: t.clone() for n, t in buffers.items()}
    x = torch.randn(P, BATCH, 40)
    logits = forward(stacked(models, buffers=False), buffers, x)
    for a, model in enumerate(models):
        torch.testing.assert_close(logits[a], model(x[a]), rtol=0, atol=1e-5)
    for n, t in buffers.items():
        assert torch.equal(t, before[n])


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv1d(2, 2, 3, padding="same"),
        nn.Conv1d(2, 2, 3, dilation=2),
        nn.Conv1d(2, 2, 3, groups=2),
        nn.Conv1d(2, 2, 3, padding_mode="circular"),
        nn.BatchNorm1d(2, momentum=None),
        nn.Conv2d(1, 1, 3),
        nn.Dropout(),
        nn.Tanh(),
    ],
    ids=repr,
)
def test_layers_not_written_here_leave_the_model_to_vmap(module: nn.Module) -> None:
    assert compile_packed(nn.Sequential(nn.Flatten(), module)) is None


@pytest.mark.parametrize("arch", ["smallconvnet", "resnet18"])
def test_image_models_leave_to_vmap(arch: str) -> None:
    assert compile_packed(build_model(arch, (3, 32, 32), 10)) is None


class Doubling(nn.Sequential):
    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


class Squashed(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).tanh()


def hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 3))
    model[0].register_forward_hook(lambda module, args, out: out + 1)
    return model


def tied() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    return model


def parametrized() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4))
    torch.nn.utils.parametrizations.orthogonal(model[0])
    return model


def used_twice() -> nn.Module:
    layer = nn.Linear(4, 4)
    return nn.Sequential(layer, nn.ReLU(), layer)


@pytest.mark.parametrize(
    "make",
    [lambda: Doubling(nn.Linear(5, 3)), lambda: nn.Sequential(Squashed(5, 3)), hooked, tied,
     parametrized, used_twice],
    ids=["sequential-subclass", "linear-subclass", "hook", "tied", "parametrized", "used-twice"],
)  # fmt: skip
def test_models_that_compute_something_else_or_share_weights_leave_to_vmap(
    make: Callable[[], nn.Module],
) -> None:
    assert compile_packed(make()) is None


def test_a_global_module_hook_leaves_every_model_to_vmap() -> None:
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: out)
    try:
        assert compile_packed(build_model("mlp", (40,), 10)) is None
    finally:
        handle.remove()
    assert compile_packed(build_model("mlp", (40,), 10)) is not None


def test_an_activation_module_used_twice_is_applied_twice() -> None:
    relu = nn.ReLU()
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu) for _ in range(P)]
    forward = compile_packed(models[0])
    assert forward is not None
    x = torch.randn(P, BATCH, 4)
    logits = forward(stacked(models, buffers=False), {}, x)
    for a, model in enumerate(models):
        torch.testing.assert_close(logits[a], model(x[a]), rtol=0, atol=1e-6)
