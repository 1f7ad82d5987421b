"""The client's local training (fedsim/models/train.py ``train_local``) as a differentiable
function of its data: what the simulation attack (attacks/simulation.py) unrolls on dummies.

From w_0 = the weights the server sent, one step per batch B_s (s = 1 .. T), each on the
mean loss of its samples, g_s = grad L(w_{s-1}; X[B_s], Y[B_s]), with the arithmetic of the
PyTorch optimiser the observation's config names, fresh each round (fedsim's clients keep
no optimiser state):

- clip (grad-clip c > 0, ``torch.nn.utils.clip_grad_norm_``): g_s <- g_s min(1, c / (||g_s|| + 1e-6)),
  the norm over all tensors together;
- sgd (``torch.optim.SGD``, dampening 0, no Nesterov): b_s = beta b_{s-1} + g_s, b_0 = 0,
  w_s = w_{s-1} - lr b_s (plain SGD: beta = 0);
- adam (``torch.optim.Adam``, betas (0.9, 0.999), eps 1e-8; Kingma & Ba 2015, Alg. 1):
  m_s = m_{s-1} + (1 - b1)(g_s - m_{s-1}), v_s = b2 v_{s-1} + (1 - b2) g_s^2,
  w_s = w_{s-1} - lr / (1 - b1^s) * m_s / (sqrt(v_s) / sqrt(1 - b2^s) + eps).

Batch order (``batches``): one (b,) index tensor into X per step. Granted (threat model
``batch_order_known``), it is the client's own: per-epoch reshuffles included. Otherwise
``fixed_batches``: step k of every epoch takes [k B, (k+1) B), which is the first epoch's
order without loss of generality (the dummies are free), but not the later epochs' when the
client reshuffles ("per-epoch" shuffle), an error the attack then carries.
"""

from __future__ import annotations

import math

import torch

from attacks.base import AttackError
from attacks.objectives import Functional
from attacks.threat_model import LocalHparams

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which fedsim's clients use
OPTIMIZERS = ("sgd", "adam")


def fixed_batches(n: int, batch_size: int, epochs: int, steps: int | None = None) -> list[torch.Tensor]:
    """The assumed order: per epoch, K = ceil(n / B) steps, step k taking [k B, (k+1) B); ``steps``
    (the reply's count, when known) fixes K = steps / epochs instead (steps past the n images,
    e.g. a secure sum's count over several clients, take none)."""
    per_epoch = max(steps // max(epochs, 1), 1) if steps else math.ceil(n / batch_size)
    index = torch.arange(n)
    one = [index[k * batch_size:(k + 1) * batch_size] for k in range(per_epoch)]
    return [b for _ in range(epochs) for b in one if len(b)]


def per_epoch_batches(n: int, batch_size: int, epochs: int, steps: int | None = None) -> list[torch.Tensor]:
    """Dimitrov et al.'s layout: epoch e has dummies of its own, [e n, (e + 1) n), and step k of it
    takes [e n + k B, e n + (k + 1) B) (``fixed_batches`` within each epoch's copies)."""
    one = fixed_batches(n, batch_size, 1, steps // max(epochs, 1) if steps else None)
    return [b + e * n for e in range(epochs) for b in one]


def _clip(g: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = torch.sqrt(sum(x.pow(2).sum() for x in g))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return [x * coef for x in g]


def unroll(fn: Functional, x: torch.Tensor, y: torch.Tensor, h: LocalHparams,
           batches: list[torch.Tensor] | tuple[torch.Tensor, ...], *, create_graph: bool = True
           ) -> dict[str, torch.Tensor]:
    """w_T after the client's T = len(batches) steps on (x (N, C, H, W), y (N,)) from fn.params,
    differentiable in x when create_graph. AttackError for an optimiser it cannot replay."""
    if h.optimizer not in OPTIMIZERS:
        raise AttackError(f"the client's optimizer '{h.optimizer}' cannot be simulated; known: {', '.join(OPTIMIZERS)}")
    if batches and max(int(b.max()) for b in batches if len(b)) >= x.shape[0]:
        raise AttackError(f"the batch order names more samples than the {x.shape[0]} dummies; "
                          "reconstruct as many images as the client used (batch-size)")
    params = dict(fn.params)
    state: list[torch.Tensor] | None = None  # sgd: b; adam: m
    second: list[torch.Tensor] | None = None  # adam: v
    b1, b2 = ADAM_BETAS
    for s, idx in enumerate(batches, start=1):
        g = fn.grads(fn.loss(x[idx], y[idx], params=params), params=params, create_graph=create_graph)
        if h.grad_clip > 0:
            g = _clip(g, h.grad_clip)
        if h.optimizer == "sgd":
            if h.momentum:
                state = g if state is None else [h.momentum * b + gi for b, gi in zip(state, g)]
                step = [h.lr * b for b in state]
            else:
                step = [h.lr * gi for gi in g]
        else:
            state = [torch.zeros_like(gi) for gi in g] if state is None else state
            second = [torch.zeros_like(gi) for gi in g] if second is None else second
            state = [m + (1 - b1) * (gi - m) for m, gi in zip(state, g)]
            second = [b2 * v + (1 - b2) * gi * gi for v, gi in zip(second, g)]
            c1, c2 = 1 - b1 ** s, math.sqrt(1 - b2 ** s)
            # clamp: sqrt'(0) is infinite; a coordinate whose gradient was always 0 gets no step and no NaN
            step = [(h.lr / c1) * m / (v.clamp_min(1e-30).sqrt() / c2 + ADAM_EPS) for m, v in zip(state, second)]
        params = {name: p - d for (name, p), d in zip(params.items(), step)}
    return params
