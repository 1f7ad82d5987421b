"""Gradient-ascent FU (Halimi et al., arXiv:2207.05521): projected gradient ascent on the
forget loss inside an L2 ball around a reference model."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.train import Task, TrainStats
from fedsim.unlearning.common import Data, batch_of, batches, device_of


def gradient_ascent_train(model: nn.Module, task: Task, forget: Data, *, reference: dict[str, torch.Tensor],
                          radius: float, epochs: int, batch_size: int, lr: float,
                          generator: torch.Generator, grad_clip: float = 1.0) -> TrainStats:
    """Projected gradient ascent on the mean forget loss F_ku (Halimi et al.):
    w <- Proj_{||w - w_ref|| <= radius}(w + lr * grad F_ku(w)), plain SGD steps with the
    gradient clipped to ``grad_clip`` (0: none), the projection joint over all parameters.
    TrainStats.loss is the mean forget loss seen (before each ascent step)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    model.train()
    device = device_of(model)
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if missing := [n for n, _ in named if n not in reference]:
        raise ValueError(f"reference lacks parameters: {', '.join(missing[:3])}")
    ref = {n: reference[n].to(device=p.device, dtype=p.dtype) for n, p in named}
    n = forget[0].shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx, _ in batches(n, 0, batch_size, generator):
            loss = task.loss(model, *batch_of(forget, idx, device), generator=generator).mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            with torch.no_grad():
                for _name, p in named:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=lr)
                dist = torch.sqrt(sum((p - ref[k]).pow(2).sum() for k, p in named))
                if dist > radius:
                    for k, p in named:
                        p.copy_(ref[k] + (p - ref[k]) * (radius / dist))
            total += float(loss.detach())
            steps += 1
    model.zero_grad(set_to_none=True)
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n)


def reference_model(global_sd: dict[str, torch.Tensor], local_sd: dict[str, torch.Tensor],
                    num_clients_in_round: int) -> dict[str, torch.Tensor]:
    """Halimi's w_ref = (N w_global - w_local) / (N - 1): the mean of the other N - 1
    clients' models under FedAvg with equal weights. Non-float entries are copied from
    the global state."""
    n = num_clients_in_round
    if n < 2:
        raise ValueError(f"reference_model needs at least 2 clients in the round, got {n}")
    if set(global_sd) != set(local_sd):
        raise ValueError("global and local state dicts have different keys")
    return {k: (n * g - local_sd[k].to(g)) / (n - 1) if g.is_floating_point() else g.clone()
            for k, g in global_sd.items()}
