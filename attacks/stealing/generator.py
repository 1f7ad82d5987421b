"""The query generator: a small DCGAN-style decoder from z ~ N(0, I) to images in [-1, 1].

Written by hand: a few transposed convolutions sized to the target's image shape.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        self.z_dim, self.shape = z_dim, shape
        self.h0, self.w0 = max(1, -(-h // 4)), max(1, -(-w // 4))
        self.fc = nn.Linear(z_dim, 2 * width * self.h0 * self.w0)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(self.fc(z).view(z.shape[0], -1, self.h0, self.w0))
        return x[..., :self.shape[1], :self.shape[2]]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        device = next(self.parameters()).device
        return self(torch.randn(n, self.z_dim, generator=generator).to(device))
