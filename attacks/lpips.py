"""LPIPS (Zhang et al. 2018; v0.1, AlexNet) from a local AlexNet checkpoint, computed by torchmetrics.

torchmetrics has LPIPS (its ``_LPIPS`` module: the lpips package's code, with the linear
layers' weights shipped inside torchmetrics), but it builds the AlexNet backbone through
torchvision, which does not import next to this project's torch, and fetches the ImageNet
weights over the network. So the backbone is built here: torchvision's AlexNet ``features``
layer list, the same modules under the same indices, loaded from a file the user already
has, torchvision's ``alexnet-owt-7be5be79.pth`` (found in ``~/.cache/torch/hub/checkpoints``
on any machine where torchvision once downloaded it). It is handed to torchmetrics' ``_LPIPS``
in place of torchvision's, and every other step is torchmetrics' own code: the scaling layer,
the five ReLU taps, unit-normalising the channels, the linear layers and the spatial mean.
Nothing is downloaded. Without the file, LPIPS is "n/a".

Inputs are images in [0, 1] (the metrics' scale). Grey images are repeated to 3 channels.
AlexNet's five taps need a side of at least 31 px, so smaller images (8 x 8 digits, 28 x 28
MNIST) are first upsampled bilinearly to 64 x 64, as torch-fidelity and torchmetrics' own
``resize`` option do. Scores of such images are comparable with each other, not with LPIPS
values published at other sizes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from attacks.base import AttackError

MIN_SIDE, RESIZE = 31, 64
BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features: the same layers at the same indices (0-12)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


@functools.lru_cache(maxsize=2)
def load_lpips(path: str) -> nn.Module:
    """torchmetrics' LPIPS network with the AlexNet backbone read from ``path`` (a torchvision
    AlexNet state dict); AttackError (one line) if the file is missing or is not one."""
    from torchmetrics.functional.image import lpips as tm

    file = Path(path).expanduser()
    if not file.is_file():
        raise AttackError(f"lpips-backbone {file}: no such file (torchvision's {BACKBONE_FILE})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        features = alexnet_features()
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                  if k.startswith("features.")})
    except Exception as err:  # unpickling or key/shape mismatch: not torchvision's AlexNet
        raise AttackError(f"lpips-backbone {file} is not torchvision's AlexNet state dict "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    with mock.patch.object(tm, "_get_tv_model_features", lambda net, pretrained=False: features):
        net = tm._NoTrainLpips(net="alex", pretrained=True, pnet_rand=True)  # linear layers: torchmetrics' file
    return net.eval()


def lpips(net: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of two (B, C, H, W) batches in [0, 1] (C = 1 or 3): (B,) float64."""
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"expected two (B, 1|3, H, W) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = (x.detach().to("cpu", torch.float32) for x in (a, b))
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    if min(a.shape[-2:]) < MIN_SIDE:
        a, b = (nn.functional.interpolate(x, (RESIZE, RESIZE), mode="bilinear", align_corners=False) for x in (a, b))
    with torch.no_grad():
        return net(a.clamp(0, 1), b.clamp(0, 1), normalize=True).flatten().double()
