"""The model zoo: small models for MNIST-1D and image classifiers up to ResNet-18.

All models use torch's default initialization, so torch.manual_seed alone fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from foundation.part_names import ARCHS


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build a fresh built-in model of the named architecture for inputs of input_shape."""
    if arch not in ARCHS:
        raise ValueError(
            f"Unknown architecture {arch!r}; valid architectures are {', '.join(ARCHS)}."
        )
    return MODELS[arch](tuple(input_shape), num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    # The 40-100-100-10 MLP of our MNIST-1D benchmarks; no BatchNorm on purpose.
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def _cnn1d(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The MNIST-1D paper's small conv net, for signals of shape (L,)."""
    _require_rank("cnn1d", input_shape, 1, "(L,)")
    (length,) = input_shape
    for kernel in (5, 3, 3):  # output length of each stride-2, padding-1 conv
        length = (length + 2 - kernel) // 2 + 1
    if length < 1:
        raise ValueError(f"cnn1d needs signals of length >= 5, got {input_shape}")
    return nn.Sequential(
        nn.Unflatten(1, (1, input_shape[0])),
        nn.Conv1d(1, 25, 5, stride=2, padding=1),
        # Not in the paper: the one BatchNorm here makes this our small test model for
        # BatchNorm buffers (running statistics) moving through the service.
        nn.BatchNorm1d(25),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(25 * length, num_classes),
    )


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def _small_convnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """VGG-like conv net with BatchNorm, ~0.54M parameters for 3x32x32 inputs."""
    _require_rank("smallconvnet", input_shape, 3, "(C, H, W)")
    return nn.Sequential(
        *_conv_bn_relu(input_shape[0], 32),
        *_conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        *_conv_bn_relu(64, 128),
        *_conv_bn_relu(128, 128),
        nn.MaxPool2d(2),
        *_conv_bn_relu(128, 256),
        # Global pooling makes the head independent of the input size (28 or 32 pixels).
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs plus an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: one 3x3 stride-1 conv and no max-pool, because a
    7x7 stride-2 stem plus pooling would shrink 32x32 images to 8x8 before the first block."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 64))
        stages: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


def _resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _require_rank("resnet18", input_shape, 3, "(C, H, W)")
    return ResNet18(input_shape[0], num_classes)


MODELS: dict[str, Callable[[tuple[int, ...], int | None], nn.Module]] = {}
"""The built-in factories by name, each called as factory(input_shape, num_classes)."""


def _classifier(
    build: Callable[[tuple[int, ...], int], nn.Module],
) -> Callable[[tuple[int, ...], int | None], nn.Module]:
    """A built-in classifier: it needs class labels, so num_classes must be known."""

    def factory(input_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
        if num_classes is None:
            raise ValueError("this built-in model classifies: it needs integer class labels")
        return build(tuple(input_shape), num_classes)

    factory.__qualname__ = build.__name__.lstrip("_")
    return factory


def _require_rank(arch: str, input_shape: tuple[int, ...], rank: int, form: str) -> None:
    if len(input_shape) != rank:
        raise ValueError(f"{arch} needs inputs of shape {form}, got {input_shape}")


MODELS.update(
    mlp=_classifier(_mlp),
    cnn1d=_classifier(_cnn1d),
    smallconvnet=_classifier(_small_convnet),
    resnet18=_classifier(_resnet18),
)
