"""Reference sets that validate an evaluator's reject option, and the validation table.

Real held-out images must be recognised (and classified correctly); the negative kinds
must not be: uniform and Gaussian noise, real images blurred or drowned in noise, and
samples of an untrained DDPM (a negative the thresholds were never calibrated against,
and the one a collapsed generator produces). Targets (../shared/papers/evaluation.md):
at least 95 % of real images recognised and correct, at most 1 % of each negative kind
recognised. All sets come from fixed generators, so the table is the same on every build.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedsim.data.datasets import ImageData

REAL_TARGET = 0.95
NEGATIVE_TARGET = 0.01
NUM_NEGATIVES = 1000
NUM_DDPM = 500


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), borders padded with the background (-1)."""
    radius = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, value=-1.0)
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def untrained_ddpm_samples(shape: tuple[int, int, int], n: int = NUM_DDPM) -> torch.Tensor | None:
    """n DDIM samples (20 steps) of a freshly initialised ddpm-small (seed 0); None when the
    image shape does not fit a UNet."""
    from fedsim.models.diffusion import NoiseSchedule, sample
    from fedsim.models.networks import ModelError, build_model

    try:
        model = build_model("ddpm-small", shape, 1, seed=0)
    except ModelError:
        return None
    return sample(model.eval(), NoiseSchedule(1000), n, shape, generator=torch.Generator().manual_seed(7),
                  sampler="ddim", steps=20)


def negatives(test: ImageData) -> dict[str, torch.Tensor]:
    """The negative kinds, each (N, C, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(12345)
    shape = (NUM_NEGATIVES, *test.shape)
    real = test.images[torch.randint(0, len(test), (NUM_NEGATIVES,), generator=g)]
    sets = {
        "uniform noise": torch.rand(shape, generator=g) * 2 - 1,
        "gaussian noise": torch.randn(shape, generator=g).clamp(-1, 1),
        "blurred real (sigma = side/8)": gaussian_blur(real, test.shape[1] / 8).clamp(-1, 1),
        "noised real (+ N(0, 0.75^2))": (real + 0.75 * torch.randn(shape, generator=g)).clamp(-1, 1),
    }
    ddpm = untrained_ddpm_samples(test.shape)
    if ddpm is not None:
        sets["untrained DDPM samples"] = ddpm
    return sets


def validate(ev, test: ImageData) -> pd.DataFrame:
    """One row per reference set: n, recognised share, recognised-and-correct share (real only),
    the target and whether it is met."""
    pred, ok = ev.judge(test.images)
    rows = [{"kind": "real test images", "n": len(test), "recognised": float(ok.mean()),
             "recognised_correct": float((ok & (pred == test.labels)).mean()),
             "target": f">= {REAL_TARGET:.0%} recognised and correct"}]
    rows[0]["pass"] = rows[0]["recognised_correct"] >= REAL_TARGET
    for kind, images in negatives(test).items():
        _, ok = ev.judge(images)
        rows.append({"kind": kind, "n": len(images), "recognised": float(ok.mean()),
                     "recognised_correct": np.nan, "target": f"<= {NEGATIVE_TARGET:.0%} recognised",
                     "pass": float(ok.mean()) <= NEGATIVE_TARGET})
    return pd.DataFrame(rows)
