"""Model zoo: shapes, parameter counts, errors and seed determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from foundation.models import ARCHS, build_model, count_parameters

# Each arch on its typical input, plus the 1-channel 28x28 images the image models must take.
CASES: list[tuple[str, tuple[int, ...]]] = [
    ("mlp", (40,)),
    ("mlp", (1, 28, 28)),
    ("cnn1d", (40,)),
    ("smallconvnet", (3, 32, 32)),
    ("smallconvnet", (1, 28, 28)),
    ("resnet18", (3, 32, 32)),
    ("resnet18", (1, 28, 28)),
]


@pytest.mark.parametrize(("arch", "input_shape"), CASES)
def test_forward_gives_one_logit_per_class(arch: str, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, input_shape, num_classes=7)
    logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_mlp_has_the_benchmark_parameter_count() -> None:
    model = build_model("mlp", (40,), 10)
    assert count_parameters(model) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_cnn1d_is_the_paper_net_with_one_batchnorm() -> None:
    model = build_model("cnn1d", (40,), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 25, (5,), (2,)),
        (25, 25, (3,), (2,)),
        (25, 25, (3,), (2,)),
    ]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 1
    # Lengths 40 -> 19 -> 10 -> 5, so the head sees 25 * 5 features.
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert linear.in_features == 125


def test_smallconvnet_size() -> None:
    count = count_parameters(build_model("smallconvnet", (3, 32, 32), 10))
    print(f"smallconvnet parameters for 3x32x32, 10 classes: {count:,}")
    assert 500_000 <= count <= 700_000


def test_resnet18_size_and_cifar_stem() -> None:
    model = build_model("resnet18", (3, 32, 32), 10)
    assert 11_100_000 <= count_parameters(model) <= 11_300_000
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert (first_conv.kernel_size, first_conv.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_unknown_arch_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown architecture") as info:
        build_model("vgg16", (3, 32, 32), 10)
    assert all(arch in str(info.value) for arch in ARCHS)


@pytest.mark.parametrize(("arch", "input_shape"), [("cnn1d", (1, 28, 28)), ("resnet18", (40,))])
def test_wrong_input_rank_is_refused(arch: str, input_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=arch):
        build_model(arch, input_shape, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_parameters(arch: str) -> None:
    shape = (40,) if arch in ("mlp", "cnn1d") else (3, 32, 32)

    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(arch, shape, 10).state_dict()

    first, again, other = state(0), state(0), state(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # A different seed must change something, or the equality above proves nothing.
    assert any(not torch.equal(first[k], other[k]) for k in first)
