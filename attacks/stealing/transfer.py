"""Transfer attack: PGD (Madry et al. 2018) on the substitute, scored on the target.

Success rate: among test images the target classifies correctly, the share it misclassifies
after an L-infinity PGD perturbation (radius ``eps``, ``steps`` steps of ``alpha``, images kept
in [-1, 1]) computed on the substitute alone. Written by hand: ten lines of torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """Untargeted L-inf PGD from x (no random start), clipped to [-1, 1]."""
    model.eval()
    adv = x.clone().detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + alpha * grad.sign()
            adv = (x + (adv - x).clamp(-eps, eps)).clamp(-1, 1)
    return adv.detach()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s:s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)])


def transfer_success(substitute: nn.Module, target: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                     eps: float, alpha: float, steps: int, batch_size: int = 256) -> float:
    """Share of the target's correctly classified images that PGD on the substitute turns wrong."""
    right = _predict(target, images) == labels
    if not bool(right.any()):
        return float("nan")
    x, y = images[right], labels[right]
    fooled = 0
    for s in range(0, len(y), batch_size):
        adv = pgd(substitute, x[s:s + batch_size], y[s:s + batch_size], eps=eps, alpha=alpha, steps=steps)
        fooled += int((_predict(target, adv) != y[s:s + batch_size]).sum())
    return fooled / len(y)
