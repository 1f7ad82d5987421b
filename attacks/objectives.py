"""Gradient-matching objectives and image priors shared by the attacks.

- ``Functional``: the victim's loss and its parameter gradient as a differentiable
  function of dummy inputs (double backward: d/dx of a function of grad_theta L).
- ``observed_gradient``: the target g* from an observation. A FedSGD reply is the
  gradient; a FedAvg reply gives Delta w = w_local - w_0 and the approximate gradient
  g~ = -Delta w / (lr * S), S = E * K for plain SGD (shared/papers/attacks.md, "Sign and
  scale"), S = ``effective_steps`` for momentum SGD.
- distances: plain L2 (DLG, GIDM), cosine with optional layer weights (IG, AGIC);
- ``total_variation`` image prior; ``layer_weights`` increasing with depth (AGIC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch import nn
from torch.func import functional_call

from attacks.base import AttackError, Victim
from attacks.threat_model import AttackInput
from fedsim.models.train import DiffusionTask

Grads = list[torch.Tensor]


def double_backward_ready(model: nn.Module) -> nn.Module:
    """Switch diffusers attention to the plain (matmul + softmax) processor: PyTorch's CPU
    flash-attention kernel has no double backward, which every gradient-matching attack needs."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    return model


class _Bound:
    """The model called with an explicit parameter dict (torch.func.functional_call), exposing
    ``config`` so fedsim's predict_eps / diffusion_loss accept it in place of the module."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.model, self.params = model, params
        self.config = getattr(model, "config", None)

    def __call__(self, *args, **kwargs):
        return functional_call(self.model, self.params, args, kwargs)


class Functional:
    """grad_theta L(theta; x, y[, eps, t]) at fixed weights theta = the observation's ``sent``.

    The weights are constants; the gradient is differentiable in x, soft labels, eps (and
    continuous t), so an attack can back-propagate a distance between gradients to its dummies."""

    def __init__(self, victim: Victim, sent: dict[str, torch.Tensor], bn_mode: str = "batch") -> None:
        if bn_mode not in ("batch", "eval", "buffers"):
            raise AttackError(f"unknown bn_mode '{bn_mode}'; known: batch, eval, buffers")
        self.victim = victim
        # train mode: BatchNorm normalises by the batch (the client's training forward); the buffers it
        # updates are copies. eval: by the sent running statistics. Other victims have no mode-dependent layer.
        model = double_backward_ready(victim.model).train(bn_mode != "eval")
        self.names = [n for n, _ in model.named_parameters()]
        missing = [n for n in self.names if n not in sent]
        if missing:
            raise AttackError(f"the observation does not match the victim architecture: "
                              f"{len(missing)} parameters missing (first: {missing[0]})")
        state = {k: v.detach().float() for k, v in sent.items()}
        self.params = {n: state[n].clone().requires_grad_(True) for n in self.names}
        self.buffers = {k: v.clone() for k, v in state.items() if k not in self.params}
        self.model = model

    def bound(self, params: dict[str, torch.Tensor] | None = None) -> _Bound:
        return _Bound(self.model, {**(self.params if params is None else params), **self.buffers})

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None, *, soft_labels: torch.Tensor | None = None,
             eps: torch.Tensor | None = None, t: torch.Tensor | None = None,
             params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean loss over the batch at ``params`` (default: the observed weights). Classifier:
        cross-entropy with hard y (B,) or soft labels (B, K) (probabilities, DLG). Diffusion:
        DDPM loss with the given eps (B, C, H, W) and t (B,)."""
        f = self.bound(params)
        if isinstance(self.victim.task, DiffusionTask):
            if eps is None or t is None:
                raise AttackError("diffusion loss needs eps and t (known, or optimised by GIDM+)")
            return self.victim.task.loss(f, x, y, generator=None, eps=eps, t=t).mean()
        logits = f(x)
        if soft_labels is not None:
            return -(soft_labels * F.log_softmax(logits, dim=1)).sum(1).mean()
        return F.cross_entropy(logits, y)

    def grads(self, loss: torch.Tensor, create_graph: bool = True,
              params: dict[str, torch.Tensor] | None = None) -> Grads:
        p = self.params if params is None else params
        return list(torch.autograd.grad(loss, list(p.values()), create_graph=create_graph))

    def shifted(self, delta: Grads, factor: float) -> dict[str, torch.Tensor]:
        """Parameters w_0 + factor * delta (a point on the segment from w_0 to w_local)."""
        return {n: (p.detach() + factor * d).requires_grad_(True)
                for (n, p), d in zip(self.params.items(), delta)}


def local_steps(inp: AttackInput) -> int:
    """E * K: the reply's step count when known, else epochs * ceil(N / B)."""
    h = inp.hparams
    if h is None:
        raise AttackError("the local hyper-parameters are unknown to the attacker "
                          "(threat model local_hparams = false)")
    if h.steps:
        return int(h.steps)
    n = inp.num_samples or h.batch_size
    return int(h.epochs) * math.ceil(n / h.batch_size)


def effective_steps(steps: int, momentum: float = 0.0) -> float:
    """S = sum_{t=1..T} sum_{j<t} beta^j = (T - beta (1 - beta^T) / (1 - beta)) / (1 - beta).

    Heavy-ball SGD as PyTorch runs it (b_t = beta b_{t-1} + g_t, w_t = w_{t-1} - lr b_t, b_0 = 0:
    a fresh optimizer each round) moves w by -lr S g in T steps of a constant gradient g, so
    -Delta w / (lr S) is g; S = T without momentum (beta = 0), and S -> T / (1 - beta) for T >> 1."""
    if momentum == 0:
        return float(steps)
    b = float(momentum)
    return (steps - b * (1 - b ** steps) / (1 - b)) / (1 - b)


def observed_gradient(inp: AttackInput, names: Sequence[str], *, need_scale: bool = True) -> Grads:
    """g* per parameter, in ``names`` order.

    FedSGD: the reply itself. FedAvg: g~ = -Delta w / (lr * S) (AGIC's approximation, exact for
    one SGD step): S = E * K local steps for plain SGD, ``effective_steps`` with the config's
    momentum for momentum SGD (exact while the gradient stays constant). Adam's step
    lr m^ / (sqrt(v^) + eps) has no gradient scale (about lr per coordinate): g~ = -Delta w / (lr E K)
    is then the mean normalised step, whose direction stands for the gradient's; the scale is
    not the gradient's, which the cosine distances (IG, AGIC, simulation) ignore and L2 (DLG,
    GIDM) and the count label strategy do not. A grad clip likewise changes only the scale.
    With need_scale=False (cosine distances) an unknown lr or step count falls back to -Delta w,
    whose direction is all a cosine distance uses."""
    g = [inp.update[n].detach().float() for n in names]
    if inp.payload == "gradient":
        return g
    if inp.hparams is None:
        if need_scale:
            local_steps(inp)  # raises the one-line AttackError
        return [-x for x in g]
    h = inp.hparams
    scale = h.lr * effective_steps(local_steps(inp), h.momentum if h.optimizer == "sgd" else 0.0)
    return [-x / scale for x in g]


def l2_distance(g: Grads, target: Grads) -> torch.Tensor:
    """sum_l || g_l - g*_l ||^2 (DLG; GIDM)."""
    return sum((a - b).pow(2).sum() for a, b in zip(g, target))


def cosine_distance(g: Grads, target: Grads, weights: Sequence[float] | None = None) -> torch.Tensor:
    """1 - sum_l w_l <g_l, g*_l> / ( sqrt(sum_l w_l ||g_l||^2) sqrt(sum_l w_l ||g*_l||^2) ).

    Unweighted (w_l = 1) this is IG's cosine over all tensors concatenated (Geiping et al. 2020,
    eq. 4); with weights increasing with depth it is AGIC's weighted distance."""
    w = [1.0] * len(g) if weights is None else weights
    dot = sum(wl * (a * b).sum() for wl, a, b in zip(w, g, target))
    na = sum(wl * a.pow(2).sum() for wl, a in zip(w, g))
    nb = sum(wl * b.pow(2).sum() for wl, b in zip(w, target))
    return 1 - dot / (na.sqrt() * nb.sqrt() + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean |x[h+1] - x[h]| + mean |x[w+1] - x[w]| over a (B, C, H, W) batch."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    return dh + dw


SCHEDULES = ("none", "linear", "log", "quadratic", "geometric")


def layer_weights(names: list[str], schedule: str = "linear", scale: float = 20.0,
                  target: Grads | None = None, preserve: bool = False) -> list[float]:
    """Per-tensor weights increasing with module depth (AGIC).

    ``names`` are the parameter names in the model's order (named_parameters: input to output).
    A module is a name up to its last dot, so a layer's weight and bias share one weight.
    Module k of n gets w = f(u), u = k / (n - 1), from 1 at the input to ``scale`` = s at the
    output layer: linear 1 + (s-1) u; log 1 + (s-1) ln(1 + (e-1) u); quadratic 1 + (s-1) u^2;
    geometric s^u. ``preserve`` divides w_l by the non-zero fraction of g*_l (sparsified updates)."""
    if schedule not in SCHEDULES:
        raise AttackError(f"unknown layer-weight schedule '{schedule}'; known: {', '.join(SCHEDULES)}")
    modules = list(dict.fromkeys(n.rpartition(".")[0] for n in names))
    depth = {m: k for k, m in enumerate(modules)}
    if schedule == "none" or len(modules) < 2:
        w = [1.0] * len(names)
    else:
        f = {"linear": lambda u: 1 + (scale - 1) * u,
             "log": lambda u: 1 + (scale - 1) * math.log(1 + (math.e - 1) * u),
             "quadratic": lambda u: 1 + (scale - 1) * u * u,
             "geometric": lambda u: scale ** u}[schedule]
        w = [f(depth[n.rpartition(".")[0]] / (len(modules) - 1)) for n in names]
    if preserve and target is not None:
        w = [wl / max(float((t != 0).float().mean()), 1e-6) for wl, t in zip(w, target)]
    return w
