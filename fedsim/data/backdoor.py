"""Backdoor poisoning of chosen clients' data: the evaluation of Halimi et al.'s gradient-ascent
unlearning (arXiv:2207.05521), where the client to be erased planted a backdoor.

A poisoned sample carries the trigger, a white square of side ``trigger_side(H)`` one pixel
from the bottom-right corner (MNIST's corners are always black), and the target label. Each
backdoor client poisons a share ``fraction`` of its samples whose true class is not the
target, drawn with ``derive(seed, "backdoor", client)``. Poisoning happens after
partitioning and never moves a sample: partitions and unlearning requests see the true
labels (fedsim/data/clients.py), so a run with a backdoor has the same partition as one
without. Hand-written because a trigger is two lines of tensor indexing; the seeded choice
of who is poisoned is what needs to be exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from fedsim.config import ConfigError
from fedsim.data.datasets import ImageData
from fedsim.rng import derive

WHITE = 1.0  # images are in [-1, 1]


def trigger_side(height: int) -> int:
    """Side of the square trigger: H // 5, at least 2 pixels (8x8 digits: 2, 16x16: 3, 28: 5)."""
    return max(2, height // 5)


def add_trigger(images: torch.Tensor) -> torch.Tensor:
    """A copy of images (N, C, H, W) with the trigger in every channel."""
    out = images.clone()
    h, w = out.shape[-2:]
    s = trigger_side(h)
    out[..., h - 1 - s:h - 1, w - 1 - s:w - 1] = WHITE
    return out


def poisoned_indices(labels: np.ndarray, parts: Mapping[int, np.ndarray], clients: Iterable[int], *,
                     target: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices (into the train split) of the samples the backdoor clients poison:
    round(fraction x m) of each client's m samples whose label is not ``target``, drawn
    without replacement from derive(seed, "backdoor", client)."""
    chosen = []
    for client in sorted(set(clients)):
        idx = np.sort(np.asarray(parts[client], dtype=np.int64))
        eligible = idx[labels[idx] != target]
        take = int(round(fraction * len(eligible)))
        chosen.append(derive(seed, "backdoor", client).choice(eligible, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def poison(data: ImageData, idx: np.ndarray, target: int) -> ImageData:
    """A copy of ``data`` with samples ``idx`` triggered and labelled ``target`` (the rest shared
    unchanged in value; the cached original is never written)."""
    if not 0 <= target < data.num_classes:
        raise ConfigError(f"backdoor-target must be a class of '{data.name}' (0..{data.num_classes - 1}), "
                          f"got {target}")
    images, labels = data.images.clone(), data.labels.copy()
    where = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    images[where] = add_trigger(images[where])
    labels[idx] = target
    labels.setflags(write=False)
    return ImageData(images, labels, data.num_classes, data.name)
