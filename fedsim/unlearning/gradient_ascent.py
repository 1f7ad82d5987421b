"""Gradient-ascent FU (Halimi et al., arXiv:2207.05521): projected gradient ascent on the
forget loss inside an L2 ball around a reference model, stopped early when a clean
validation accuracy falls below tau.

The reference w_ref is the weighted mean of the other clients' models in the aggregation
that produced the global model w = sum_i a_i w_i (a_i summing to 1):

    w_ref = (w - a_k w_k) / (1 - a_k)

Halimi et al. write it as (N w - w_k) / (N - 1), the same formula under equal weights
a_i = 1/N; under sample-weighted FedAvg (``weighting = "samples"``) that is wrong for
exactly the client whose share is large. The server sends the requesting client its a_k
(strategies/unlearning/reference_share.py) in the TRAIN config keys SHARE_IDS / SHARES.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedsim.models.train import Task, TrainStats, accuracy
from fedsim.unlearning.common import Data, batch_of, batches, device_of

SHARE_IDS, SHARES = "ga-share-ids", "ga-shares"  # TRAIN config: requesting clients and their a_k


def own_share(sent: Mapping, client: int) -> float:
    """This client's a_k from the TRAIN config (0.0 when the server sent none for it)."""
    ids, shares = list(sent.get(SHARE_IDS, [])), list(sent.get(SHARES, []))
    return float(dict(zip(ids, shares)).get(client, 0.0))


def gradient_ascent_train(model: nn.Module, task: Task, forget: Data, *, reference: dict[str, torch.Tensor],
                          radius: float, epochs: int, batch_size: int, lr: float,
                          generator: torch.Generator, grad_clip: float = 1.0,
                          validation: Data | None = None, stop_accuracy: float = 0.0) -> TrainStats:
    """Projected gradient ascent on the mean forget loss F_ku (Halimi et al.):
    w <- Proj_{||w - w_ref|| <= radius}(w + lr * grad F_ku(w)), plain SGD steps with the
    gradient clipped to ``grad_clip`` (0: none), the projection joint over all parameters.

    Early stop (classifiers, ``stop_accuracy`` > 0): before every step the accuracy on
    ``validation`` (images, labels) is measured and the ascent ends as soon as it is below
    ``stop_accuracy``; the step that crossed is kept (the model is where the ascent stopped).
    TrainStats.loss is the mean forget loss seen (before each ascent step), steps the steps taken."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if stop_accuracy > 0 and validation is None:
        raise ValueError("stop_accuracy needs a validation set")
    device = device_of(model)
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if missing := [n for n, _ in named if n not in reference]:
        raise ValueError(f"reference lacks parameters: {', '.join(missing[:3])}")
    ref = {n: reference[n].to(device=p.device, dtype=p.dtype) for n, p in named}
    n = forget[0].shape[0]
    total, steps, stopped = 0.0, 0, False
    for _ in range(epochs):
        for idx, _ in batches(n, 0, batch_size, generator):
            stopped = stop_accuracy > 0 and accuracy(model, *validation) < stop_accuracy
            if stopped:
                break
            model.train()
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
        if stopped:
            break
    model.zero_grad(set_to_none=True)
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n)


def reference_model(global_sd: dict[str, torch.Tensor], local_sd: dict[str, torch.Tensor],
                    share: float) -> dict[str, torch.Tensor]:
    """w_ref = (w_global - a_k w_local) / (1 - a_k): the weighted mean of the other clients'
    models when w_global = sum_i a_i w_i and a_k = ``share`` is the local model's weight
    (share 0: w_global itself). Non-float entries are copied from the global state."""
    if not 0 <= share < 1:
        raise ValueError(f"share must be in [0, 1) (no other client has weight at 1), got {share}")
    if set(global_sd) != set(local_sd):
        raise ValueError("global and local state dicts have different keys")
    return {k: ((g.double() - share * local_sd[k].double()) / (1 - share)).to(g.dtype)
            if g.is_floating_point() else g.clone() for k, g in global_sd.items()}
