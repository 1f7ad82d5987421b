"""SFDDM's distillation objective (Hong et al., "Single-fold Distillation for Diffusion Models", 2025).

A teacher with T steps and a student with T' = T / c steps whose schedule is every c-th step of the
teacher's (NoiseSchedule(T', stride=c)), so that the student's noisy input at t is exactly the
teacher's at c t. Per batch (the teacher without gradients, ../shared/papers/later.md):

    t ~ U{0 .. T'-1}, eps ~ N(0, I), x' = sqrt(abar'_t) x0 + sqrt(1 - abar'_t) eps  (= the teacher's x_{ct})
    L = mean |eps_S(x', t) - eps_T(x', c t)| + hidden(h_S(x', t), h_T(x', c t))

where h is the UNet's last hidden feature map, the input of its final convolution (``conv_out``),
read with a forward hook. ``hidden`` is ``l1`` (mean absolute difference, as the authors' code has
it) or ``kl``: KL(softmax(h_T) || softmax(h_S)) over each sample's flattened features, the reading
of the paper's "matching the distribution of hidden variables"; which one the paper means is
unverified. Written by hand: no library implements SFDDM.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models.diffusion import NoiseSchedule, predict_eps

HIDDEN_LOSSES = ("l1", "kl")


class DistillLoss(NamedTuple):
    total: torch.Tensor
    output: torch.Tensor  # mean |eps_S - eps_T|
    hidden: torch.Tensor


@contextlib.contextmanager
def hidden_features(model: nn.Module):
    """Yields a list that gets, at each forward pass, the input of ``model.conv_out``."""
    if not hasattr(model, "conv_out"):
        raise ValueError(f"{type(model).__name__} has no conv_out: SFDDM distils diffusers UNets")
    seen: list[torch.Tensor] = []
    handle = model.conv_out.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def _hidden_term(h_s: torch.Tensor, h_t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return (h_s - h_t).abs().mean()
    log_s, log_t = F.log_softmax(h_s.flatten(1), dim=1), F.log_softmax(h_t.flatten(1), dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def sfddm_loss(student: nn.Module, teacher: nn.Module, sched: NoiseSchedule, x0: torch.Tensor,
               labels: torch.Tensor | None = None, *, generator: torch.Generator, hidden: str = "l1",
               t: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> DistillLoss:
    """The loss of one batch x0 (B, C, H, W) in [-1, 1]; t and eps drawn from ``generator`` (on CPU)
    unless given. ``sched`` is the student's (stride c)."""
    if hidden not in HIDDEN_LOSSES:
        raise ValueError(f"hidden must be one of {', '.join(HIDDEN_LOSSES)}, got {hidden!r}")
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, sched.timesteps, (b,), generator=generator)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator)
    t, eps = t.to(x0.device), eps.to(x0.device)
    x = sched.add_noise(x0, eps, t)
    with torch.no_grad(), hidden_features(teacher) as seen_t:
        out_t = predict_eps(teacher, x, t * sched.stride, labels)
    with hidden_features(student) as seen_s:
        out_s = predict_eps(student, x, t, labels)
    output = (out_s - out_t).abs().mean()
    term = _hidden_term(seen_s[-1], seen_t[-1].detach(), hidden)
    return DistillLoss(output + term, output.detach(), term.detach())
