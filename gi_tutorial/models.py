"""Victim models: the networks whose gradients a federated client shares.

- :class:`MLP`: one hidden fully connected layer on the raw pixels.
- :class:`LeNet`: the sigmoid LeNet of DLG (Zhu et al., 2019), weights U(-0.5, 0.5).
- :class:`ConvNet`: a small ConvNet; ``head="flatten"`` puts a fully connected layer on
  the spatial feature map, ``head="gap"`` global-average-pools it first. The two heads
  give two regimes: the flatten head keeps where each feature was (inversion is nearly
  determined), the pooled head throws it away (inversion is under-determined).
- ``build_model("convnet_bn")``: a small ConvNet with BatchNorm, the victim of the priors chapter.
- :func:`resnet18`: torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first
  convolution, no max-pool) and BatchNorm, as used by Geiping et al. (2020).

The book's named victims, built by :func:`build_model` with a fixed seed:

- ``"convnet_s"``, **victim S**: the ConvNet of victim A with widths 8, 16, 16 (13.8k
  parameters for one input channel), small enough that a batch of 16 has more pixels than
  the gradient has entries;
- ``"convnet_m"``, **victim M**: widths 12, 24, 24 (23.3k), between S and A, so that chapter 4's
  central figure has victims of three widths on one axis of unknowns per equation;
- ``"convnet_fc"``, **victim A**: widths 32, 64, 64 and a fully connected head (96.7k);
- ``"convnet_gap"``, **victim B**: four convolutions and global average pooling (242k).

All take ``in_channels`` (1 for Fashion-MNIST, 3 for CIFAR-10) and 32x32 inputs, and record
what they accept as ``model.in_channels`` and ``model.image_size`` (None where a pooled head
takes any size). :func:`gi_tutorial.fl.checked_logits` turns a batch that does not fit into a
ValueError that says what was expected.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

MODELS = ("mlp", "lenet", "convnet_s", "convnet_fc", "convnet_gap", "convnet_bn", "resnet18", "convnet_m")
VICTIMS = {"S": "convnet_s", "M": "convnet_m", "A": "convnet_fc", "B": "convnet_gap"}  # the chapters' names for them


class MLP(nn.Module):
    """A fully connected network whose first layer sees the raw pixels (the easiest victim)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, hidden: int = 256, image_size: int = 32):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.hidden = nn.Linear(in_channels * image_size * image_size, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(x.flatten(1))))


class LeNet(nn.Module):
    """DLG's LeNet: three 5x5 convolutions of 12 channels with sigmoids, then one linear layer."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),  # (B, 12, S/2, S/2)
            nn.Conv2d(12, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),  # (B, 12, S/4, S/4)
            nn.Conv2d(12, 12, 5, stride=1, padding=2),
            nn.Sigmoid(),  # (B, 12, S/4, S/4)
        )
        self.classifier = nn.Linear(12 * (image_size // 4) ** 2, num_classes)
        for p in self.parameters():  # DLG's initialisation: smooth, non-saturated sigmoids
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class ConvNet(nn.Module):
    """3x3 convolutions with LeakyReLU (and optional BatchNorm), then a linear classifier.

    ``image_size`` fixes the input size of the flatten head; the pooled head takes any size
    (``self.image_size`` is then None).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 64),
        strides: Sequence[int] = (1, 2, 2),
        head: Literal["flatten", "gap"] = "flatten",
        batch_norm: bool = False,
        image_size: int = 32,
    ):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"widths and strides must have the same length, got {len(widths)} and {len(strides)}")
        if head not in ("flatten", "gap"):
            raise ValueError(f"head must be 'flatten' or 'gap', got {head!r}")
        self.in_channels, self.image_size = in_channels, (image_size if head == "flatten" else None)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for width, stride in zip(widths, strides):
            layers.append(nn.Conv2d(channels, width, 3, stride=stride, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            channels, size = width, (size - 1) // stride + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if head == "gap" else nn.Identity()
        self.classifier = nn.Linear(channels * (1 if head == "gap" else size * size), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool.

    Its global average pooling takes any image size (``model.image_size`` is None).
    """
    import torchvision  # here, not at the top: importing it costs seconds in every Flower client process

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.in_channels, model.image_size = in_channels, None
    return model


def build_model(name: str, in_channels: int = 3, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Build a victim model by name with a fixed seed, so every reader gets the same weights.

    Args:
        name: ``"mlp"`` (one hidden layer of 256), ``"lenet"`` (DLG), ``"convnet_s"`` (victim S:
            widths 8, 16, 16, fully connected head), ``"convnet_m"`` (victim M: widths 12, 24,
            24, fully connected head), ``"convnet_fc"`` (victim A: widths 32, 64,
            64, fully connected head on the 8x8 feature map), ``"convnet_gap"`` (four
            convolutions, global average pooling), ``"convnet_bn"`` (two convolutions with
            BatchNorm, fully connected head) or ``"resnet18"`` (CIFAR stem).
        in_channels: 1 or 3 (any positive number works).
        num_classes: size of the classifier's output.
        seed: seed of the random initialisation.

    Returns:
        the model, with ``in_channels`` and ``image_size`` attributes.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or ``in_channels``
            or ``num_classes`` that is not a positive integer.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "mlp":
            model: nn.Module = MLP(in_channels, num_classes)
        elif name == "lenet":
            model = LeNet(in_channels, num_classes)
        elif name == "convnet_s":
            model = ConvNet(in_channels, num_classes, widths=(8, 16, 16), strides=(1, 2, 2), head="flatten")
        elif name == "convnet_m":
            model = ConvNet(in_channels, num_classes, widths=(12, 24, 24), strides=(1, 2, 2), head="flatten")
        elif name == "convnet_fc":
            model = ConvNet(in_channels, num_classes, widths=(32, 64, 64), strides=(1, 2, 2), head="flatten")
        elif name == "convnet_gap":
            model = ConvNet(in_channels, num_classes, widths=(32, 64, 128, 128), strides=(1, 2, 2, 1), head="gap")
        elif name == "convnet_bn":
            model = ConvNet(in_channels, num_classes, widths=(16, 32), strides=(1, 2), head="flatten", batch_norm=True)
        else:
            model = resnet18(in_channels, num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters, which is also the length of the shared gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
