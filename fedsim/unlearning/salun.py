"""SalUn (Fan et al., ICLR 2024, arXiv:2310.12508): the forget gradient picks the salient
weights (a mask), and only those are trained to map D_f to other classes while D_r stays."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.diffusion import NoiseSchedule, diffusion_loss, predict_eps
from fedsim.models.train import DiffusionTask, Task, TrainStats
from fedsim.unlearning.common import (Data, UnlearnParams, batch_of, batches, device_of, is_conditional, mse,
                                     noisy, relabel, step)
from fedsim.unlearning.mask import top_share


def forget_gradient(model: nn.Module, task: Task, forget: Data, *, generator: torch.Generator,
                    batch_size: int = 256) -> dict[str, torch.Tensor]:
    """grad_theta sum_{x in D_f} l(theta; x) per named parameter (zeros where unused).

    For diffusion the (t, eps) of every sample are drawn up front from ``generator``, so
    the result does not depend on ``batch_size``. The model's .grad fields are cleared."""
    model.eval()
    device = device_of(model)
    images, labels = forget
    n = images.shape[0]
    extra = {}
    if isinstance(task, DiffusionTask):
        extra["t"] = torch.randint(0, task.schedule.timesteps, (n,), generator=generator)
        extra["eps"] = torch.randn(images.shape, generator=generator)
    model.zero_grad(set_to_none=True)
    for s in range(0, n, batch_size):
        kw = {k: v[s:s + batch_size].to(device) for k, v in extra.items()}
        task.loss(model, images[s:s + batch_size].to(device), labels[s:s + batch_size].to(device),
                  generator=None, **kw).sum().backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """SalUn's m = 1(|g| >= gamma) with one global threshold: exactly round(ratio * total)
    entries with the largest |g| are True (ties to the earlier entry in name order);
    mask.top_share on torch tensors, as each holder computes its own mask."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must be in (0, 1], got {ratio}")
    chosen = top_share({k: g.detach().float().cpu().numpy() for k, g in grads.items()}, ratio)
    return {k: torch.from_numpy(chosen[k]).to(g.device) for k, g in grads.items()}


def salun_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data,
                mask: dict[str, torch.Tensor] | None, *, epochs: int, batch_size: int, lr: float,
                params: UnlearnParams, num_classes: int, generator: torch.Generator) -> TrainStats:
    """SalUn for diffusion: L = E_{D_f} || eps_theta(x_t | c) - stopgrad eps_theta(x_t | c') ||^2
    + beta * DDPM-loss(D_r), c' by ``salun_relabel``; grad <- grad * m before each step.

    Unconditional models have no class to relabel: the forget term is then
    || eps_theta(x_t) - u ||^2 with u ~ U(0, 1) (x_t built with Gaussian noise), the
    random-target analogue. An epoch is one pass over D_f, each minibatch paired with a
    cyclic D_r minibatch (beta term 0 if D_r is empty); empty D_f: nothing to do (0 steps).
    Entries outside the mask never move: Adam with all-zero gradients makes zero updates.
    num_examples is n_r, the data the client keeps: its FedAvg weight (0 for a client that
    keeps nothing, whose update the server adds itself, strategies/unlearning/protocol.py)."""
    model.train()
    device = device_of(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mask is not None and (missing := [n for n, _ in named if n not in mask]):
        raise ValueError(f"saliency mask lacks parameters: {', '.join(missing[:3])}")
    masks = {} if mask is None else {n: mask[n].to(device=p.device, dtype=p.dtype) for n, p in named}
    conditional = is_conditional(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs if n_f else 0):
        for jf, ir in batches(n_f, n_r, batch_size, generator):
            xf, yf = batch_of(forget, jf, device)
            x_t, t, _ = noisy(sched, xf, generator)
            if conditional:
                with torch.no_grad():
                    other = relabel(yf, num_classes, params.salun_relabel, generator)
                    target = predict_eps(model, x_t, t, other)
            else:
                target = torch.rand(xf.shape, generator=generator).to(device)
            loss = mse(predict_eps(model, x_t, t, yf), target)
            if ir is not None and params.salun_beta > 0:
                loss = loss + params.salun_beta * diffusion_loss(
                    model, sched, *batch_of(retain, ir, device), generator=generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, p in named:
                if masks and p.grad is not None:
                    p.grad.mul_(masks[name])
            step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r)
