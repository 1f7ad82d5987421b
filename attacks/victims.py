"""Classifiers the gradient-inversion literature attacks, next to fedsim's own models.

- ``LeNet``: DLG's sigmoid LeNet (Zhu et al. 2019): three 5x5 sigmoid convolutions of 12
  channels (strides 2, 2, 1) and one linear layer. DLG only works reliably with its
  uniform(-0.5, 0.5) weight init (``init="uniform"``); PyTorch's default init makes it fail.
- ``ConvNet``: a small ReLU ConvNet (about 30 k parameters at 32x32 RGB), the size of
  breaching's CPU test network, for IG, the simulation attack and AGIC.
- ``ResNetBN`` ("resnet-bn"): a small ResNet with BatchNorm (a 3x3 stem of 16 channels, two
  basic blocks of 16 and 32 channels, the second with stride 2 and a 1x1 projection, global
  average pooling, one linear layer; about 25 k parameters). BatchNorm makes the client's
  forward depend on its batch's statistics: the threat model's ``bn_mode`` says what the
  attacker assumes (attacks/threat_model.py).
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


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNetBN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.Sequential(_Block(width, width, 1), _Block(width, 2 * width, 2))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


VICTIMS = ("lenet", "convnet", "resnet-bn")


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
        elif name == "resnet-bn":
            model = ResNetBN(channels, num_classes)
        else:
            model = build_model(name, shape, num_classes, seed=seed)
        if init == "uniform":
            for p in model.parameters():
                nn.init.uniform_(p, -0.5, 0.5)
    return model
