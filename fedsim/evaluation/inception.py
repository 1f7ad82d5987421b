"""Inception-FID from a local TorchScript Inception network, never downloaded.

Takes NVIDIA's ``inception-2015-12-05.pt`` (the TorchScript port of the
TensorFlow FID Inception used by StyleGAN2-ADA and clean-fid): called as
``detector(images_uint8 (N, 3, H, W), return_features=True)`` it resizes to
299x299 itself and returns the (N, 2048) pool features. With those features
the Frechet distance is the standard FID (Heusel et al. 2017). Grayscale images
are repeated to 3 channels. Set ``inception-weights`` to the file's path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch


class InceptionError(ValueError):
    """The weights file is missing or is not a TorchScript detector."""


@functools.lru_cache(maxsize=1)
def load_inception(path: str) -> torch.jit.ScriptModule:
    if not Path(path).is_file():
        raise InceptionError(f"inception-weights: no file at {path} (expected NVIDIA's "
                             "TorchScript inception-2015-12-05.pt)")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        raise InceptionError(f"inception-weights: {path} is not a TorchScript module: {err}") from None


@torch.no_grad()
def inception_features(detector: torch.jit.ScriptModule, images: torch.Tensor,
                       batch_size: int = 64) -> np.ndarray:
    """images (N, C, H, W) in [-1, 1] -> (N, D) float64 features."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    feats = [detector(x[s:s + batch_size], return_features=True) for s in range(0, x.shape[0], batch_size)]
    return torch.cat(feats).double().numpy()
