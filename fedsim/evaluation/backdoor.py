"""The backdoor evaluation of Halimi et al. (arXiv:2207.05521) for classifiers: how often the
trigger (fedsim/data/backdoor.py) still flips a clean test image to the target class, and the
accuracy on clean test images. Unlearning the poisoning client should bring the first down
to FedRetrain's level and keep the second."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.config import RunConfig
from fedsim.data.backdoor import add_trigger
from fedsim.data.clients import backdoor_clients
from fedsim.models.train import accuracy


def backdoor_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """Share of the images (N, C, H, W) whose true class is not ``target`` that the model classifies
    as ``target`` once they carry the trigger (NaN if every image is of the target class)."""
    keep = labels != target
    if not bool(keep.any()):
        return float("nan")
    triggered = add_trigger(images[keep])
    return accuracy(model, triggered, torch.full((len(triggered),), target, dtype=labels.dtype))


def backdoor_scores(cfg: RunConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                    ) -> dict[str, float]:
    """{"backdoor_acc", "clean_acc"} on test images, for a classifier run with backdoor-clients; else {}."""
    if cfg.is_diffusion or not backdoor_clients(cfg):
        return {}
    return {"backdoor_acc": backdoor_accuracy(model, images, labels, cfg.backdoor_target),
            "clean_acc": accuracy(model, images, labels)}
