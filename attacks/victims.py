"""Classifiers the gradient-inversion literature attacks, next to fedsim's own models.

- ``LeNet``: DLG's sigmoid LeNet (Zhu et al. 2019): three 5x5 sigmoid convolutions of 12
  channels (strides 2, 2, 1) and one linear layer. DLG only works reliably with its
  uniform(-0.5, 0.5) weight init (``init="uniform"``); PyTorch's default init makes it fail.
- ``ConvNet``: a small ReLU ConvNet (about 30 k parameters at 32x32 RGB), the size of
  breaching's CPU test network, for IG, the simulation attack and AGIC.
Any other name is built by fedsim.models.networks.build_model (cnn, ddpm-tiny, ddpm-small, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.networks import build_model


class LeNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
            nn.Flatten(),
        )
        side = -(-(-(-image_size // 2)) // 2)  # two stride-2 convolutions with padding 2
        self.head = nn.Linear(12 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.body(x))


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        side = -(-(-(-image_size // 2)) // 2)
        self.head = nn.Linear(2 * width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.body(x))


VICTIMS = ("lenet", "convnet")


def build_victim(name: str, shape: tuple[int, int, int], num_classes: int, *, seed: int = 0,
                 init: str = "default") -> nn.Module:
    """The named architecture with weights from ``seed``; init="uniform" draws every
    parameter from U(-0.5, 0.5) (DLG's setting)."""
    channels, height, _ = shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "lenet":
            model = LeNet(channels, num_classes, height)
        elif name == "convnet":
            model = ConvNet(channels, num_classes, height)
        else:
            model = build_model(name, shape, num_classes, seed=seed)
        if init == "uniform":
            for p in model.parameters():
                nn.init.uniform_(p, -0.5, 0.5)
    return model
