"""EraseDiff (Wu et al., arXiv:2401.05779): a first-order bi-level solver that keeps the
loss on D_r low while the model maps D_f to a target (uniform noise or a random label)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.diffusion import NoiseSchedule, diffusion_loss, predict_eps
from fedsim.models.train import TrainStats
from fedsim.unlearning.common import (Data, UnlearnParams, batch_of, batches, device_of, flat_grad,
                                     is_conditional, mse, noisy, relabel, set_grad, step)


def _forget_loss(model: nn.Module, sched: NoiseSchedule, x: torch.Tensor, y: torch.Tensor,
                 params: UnlearnParams, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """EraseDiff's inner objective f = E || eps_f - eps_theta(x_t^f, t, c) ||^2.

    uniform: eps_f ~ U(0, I) builds x_t^f and is the target; random-label: eps_f =
    stopgrad eps_theta(x_t^f, t, c') with c' uniform over the other classes."""
    if params.erasediff_target == "uniform":
        u = torch.rand(x.shape, generator=generator).to(x.device)
        x_t, t, target = noisy(sched, x, generator, eps=u)
    else:
        x_t, t, _ = noisy(sched, x, generator)
        with torch.no_grad():
            target = predict_eps(model, x_t, t, relabel(y, num_classes, "random", generator))
    return mse(predict_eps(model, x_t, t, y), target)


def erasediff_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data, *, epochs: int,
                    batch_size: int, lr: float, params: UnlearnParams, num_classes: int,
                    generator: torch.Generator) -> TrainStats:
    """EraseDiff's first-order bi-level solver (BOME-style, as in the official code).

    Per epoch: save theta; K = ``erasediff_inner_passes`` passes of Adam on f over D_f,
    f* = mean f over the last pass; restore theta. Then for each retain minibatch (paired
    with a cyclic forget minibatch) an Adam step on F + lambda q, q = f - f*, with
      fixed:  lambda = erasediff_lambda;
      cosine: lambda = max(eta - cos(grad F, grad q), 0)            (official code);
      bome:   lambda = max(eta ||grad q||^2 - <grad F, grad q>, 0) / ||grad q||^2   (BOME).
    Empty D_r: minimise q alone (lambda = 1); empty D_f: plain DDPM training.
    TrainStats.loss is the mean of F + lambda q over the outer steps (inner steps not counted)."""
    if params.erasediff_target == "random-label" and not is_conditional(model):
        raise ValueError("erasediff_target 'random-label' needs a class-conditional model")
    model.train()
    device = device_of(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]

    def f_loss(idx: torch.Tensor) -> torch.Tensor:
        return _forget_loss(model, sched, *batch_of(forget, idx, device), params, num_classes, generator)

    total, steps = 0.0, 0
    for _ in range(epochs):
        f_star = 0.0
        if n_f:
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            inner = torch.optim.Adam(model.parameters(), lr=lr)
            for _k in range(params.erasediff_inner_passes):
                seen = []
                for jf, _ in batches(n_f, 0, batch_size, generator):
                    f = f_loss(jf)
                    inner.zero_grad(set_to_none=True)
                    f.backward()
                    step(model, inner, params.grad_clip)
                    seen.append(float(f.detach()))
            f_star = sum(seen) / len(seen)
            model.load_state_dict(saved)
        pairs = batches(n_r, n_f, batch_size, generator) if n_r else \
            ((None, j) for j, _ in batches(n_f, 0, batch_size, generator))
        for ir, jf in pairs:
            opt.zero_grad(set_to_none=True)
            loss_r = diffusion_loss(model, sched, *batch_of(retain, ir, device), generator=generator) \
                if ir is not None else None
            q = None if jf is None else f_loss(jf) - f_star
            if q is None or loss_r is None:
                loss = loss_r if q is None else q  # lambda = 1 when D_r is empty
                loss.backward()
            elif params.erasediff_rule == "fixed":
                lam = params.erasediff_lambda
                loss = loss_r + lam * q
                loss.backward()
            else:
                g_r = flat_grad(loss_r, trainable, retain_graph=True)
                g_q = flat_grad(q, trainable)
                dot, gq2 = torch.dot(g_r, g_q), g_q.pow(2).sum()
                if params.erasediff_rule == "cosine":
                    cos = dot / (g_r.norm() * g_q.norm()).clamp_min(1e-12)
                    lam = float((params.erasediff_eta - cos).clamp_min(0))
                else:
                    lam = float((params.erasediff_eta * gq2 - dot).clamp_min(0) / gq2.clamp_min(1e-12))
                set_grad(trainable, g_r + lam * g_q)
                loss = loss_r.detach() + lam * q.detach()
            step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r)  # FedAvg weight: the data kept
