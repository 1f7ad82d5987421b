"""EraseDiff (Wu et al., arXiv:2401.05779): a first-order bi-level solver that keeps the
loss on D_r low while the model maps D_f to a target (uniform noise or a random label).

Why the inner passes share the outer optimiser. q = f - f* with f* a constant, so
grad q = grad f, and theta is restored after the inner passes: with a fresh Adam for
them (as this file had it) they changed nothing but the wall time. The official code
runs them with the one Adam of the outer loop and restores only the parameters, so
the moments and step count the inner passes build (Adam on f over D_f) persist and
shape the outer steps; this file does the same (its inner steps are clipped like every
unlearning step; the official code does not clip them). ``erasediff_inner_passes = 0``
skips them and their cost (f* = 0). The lambda rules are hand-written in
:func:`bilevel_gradient`: BOME's rule needs the two gradients apart, which no library
step offers.
"""

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


def bilevel_gradient(loss_r: torch.Tensor, q: torch.Tensor, trainable: list[torch.Tensor],
                     params: UnlearnParams) -> float:
    """Set p.grad = grad L_r + lambda grad q on ``trainable``; return lambda:
      fixed:  lambda = erasediff_lambda;
      cosine: lambda = max(eta - cos(grad L_r, grad q), 0)                       (official code);
      bome:   lambda = max(eta ||grad q||^2 - <grad L_r, grad q>, 0) / ||grad q||^2   (BOME).
    A zero grad q gives lambda = 0 under the adaptive rules."""
    if params.erasediff_rule == "fixed":
        lam = params.erasediff_lambda
        for p in trainable:
            p.grad = None
        (loss_r + lam * q).backward()
        return lam
    g_r = flat_grad(loss_r, trainable, retain_graph=True)
    g_q = flat_grad(q, trainable)
    dot, gq2 = torch.dot(g_r, g_q), g_q.pow(2).sum()
    if float(gq2) == 0.0:
        lam = 0.0
    elif params.erasediff_rule == "cosine":
        lam = float((params.erasediff_eta - dot / (g_r.norm() * g_q.norm()).clamp_min(1e-12)).clamp_min(0))
    else:
        lam = float((params.erasediff_eta * gq2 - dot).clamp_min(0) / gq2)
    set_grad(trainable, g_r + lam * g_q)
    return lam


def erasediff_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data, *, epochs: int,
                    batch_size: int, lr: float, params: UnlearnParams, num_classes: int,
                    generator: torch.Generator) -> TrainStats:
    """EraseDiff's first-order bi-level solver (BOME-style, as in the official code).

    Per epoch: save theta; K = ``erasediff_inner_passes`` passes of the (one, shared) Adam
    on f over D_f, f* = mean f over the last pass; restore theta, keep Adam's state. Then
    for each retain minibatch (paired with a cyclic forget minibatch) an Adam step on
    F + lambda q, q = f - f*, lambda by :func:`bilevel_gradient`. The inner passes draw
    from a generator seeded from ``generator`` once per epoch whatever K is, so K changes
    the outer steps' draws not at all. Empty D_r: minimise q alone (lambda = 1); empty
    D_f: plain DDPM training. TrainStats.loss is the mean of F + lambda q over the outer
    steps (inner steps not counted)."""
    if params.erasediff_target == "random-label" and not is_conditional(model):
        raise ValueError("erasediff_target 'random-label' needs a class-conditional model")
    model.train()
    device = device_of(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # shared by the inner and the outer steps
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]

    def f_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _forget_loss(model, sched, *batch_of(forget, idx, device), params, num_classes, gen)

    total, steps = 0.0, 0
    for _ in range(epochs):
        f_star = 0.0
        if n_f:
            inner_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if n_f and params.erasediff_inner_passes:
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for _k in range(params.erasediff_inner_passes):
                seen, total_n = 0.0, 0
                for jf, _ in batches(n_f, 0, batch_size, inner_gen):
                    f = f_loss(jf, inner_gen)
                    opt.zero_grad(set_to_none=True)
                    f.backward()
                    step(model, opt, params.grad_clip)
                    seen, total_n = seen + float(f.detach()) * len(jf), total_n + len(jf)
            f_star = seen / total_n  # sample-weighted mean of f over the last pass
            model.load_state_dict(saved)  # in place: opt keeps its moments of these parameters
        pairs = batches(n_r, n_f, batch_size, generator) if n_r else \
            ((None, j) for j, _ in batches(n_f, 0, batch_size, generator))
        for ir, jf in pairs:
            opt.zero_grad(set_to_none=True)
            loss_r = diffusion_loss(model, sched, *batch_of(retain, ir, device), generator=generator) \
                if ir is not None else None
            q = None if jf is None else f_loss(jf, generator) - f_star
            if q is None or loss_r is None:
                loss = loss_r if q is None else q  # lambda = 1 when D_r is empty
                loss.backward()
            else:
                lam = bilevel_gradient(loss_r, q, trainable, params)
                loss = loss_r.detach() + lam * q.detach()
            step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r)  # FedAvg weight: the data kept
