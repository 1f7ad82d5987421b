"""SCAFFOLD's client side (Karimireddy et al. 2020, Algorithm 1), plain PyTorch.

A client i keeps a control variate c_i (zero at first); the server sends its own c with the
global weights x. Every local step descends g_i(y) + c - c_i (``correction``, added to the
gradient by fedsim.models.train.train_local), then the client's variate becomes

- option II: c_i+ = c_i - c + (x - y) / (K lr), from the K local steps just taken (cheap; it
  assumes plain SGD: with momentum or Adam the steps are not lr x gradient), or
- option I: c_i+ = the gradient of the client's loss at x over all its data (one more pass;
  right whatever the local optimiser),

and it sends dc_i = c_i+ - c_i beside its weights. Variates cover the model's parameters;
other state (buffers) gets zeros, so c, c_i and dc_i have the state dict's floating keys.
Written by hand: no library the project uses implements SCAFFOLD.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.train import Task, draw_noise

CONTROL = "scaffold-c"  # server -> client: c (ArrayRecord)
DELTA = "scaffold-dc"  # client -> server: dc_i (ArrayRecord)
STATE = "scaffold-ci"  # the client's c_i, in its node context


def option(variate: str, optimizer: str, momentum: float) -> str:
    """The variate update to use: ``auto`` is II for plain SGD, I otherwise."""
    if variate != "auto":
        return variate
    return "ii" if optimizer == "sgd" and momentum == 0 else "i"


def correction(c: dict[str, torch.Tensor], c_i: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """c - c_i per parameter name: what each local step adds to the gradient."""
    return {k: c[k] - c_i[k] for k in c}


def variate_ii(c_i: dict[str, torch.Tensor], c: dict[str, torch.Tensor], x: dict[str, torch.Tensor],
               y: dict[str, torch.Tensor], steps: int, lr: float) -> dict[str, torch.Tensor]:
    """Option II: c_i - c + (x - y) / (steps lr), for the keys of x (the parameters); others keep c_i."""
    out = dict(c_i)
    for k in x:
        out[k] = c_i[k] - c[k] + (x[k] - y[k]) / (steps * lr)
    return out


def variate_i(model: nn.Module, task: Task, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
              generator: torch.Generator, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Option I: the gradient of the mean loss over all (images, labels) at the model's weights
    (in batches; a diffusion task's t and eps drawn from ``generator``); zeros for keys of ``like``
    that are not parameters. Leaves the weights unchanged and no gradient behind."""
    model.train()
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    n = images.shape[0]
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        noise = {k: v.to(device) for k, v in draw_noise(task, x, generator).items()}
        model.zero_grad(set_to_none=True)
        loss = task.loss(model, x.to(device), y.to(device), generator=generator, **noise).sum() / n
        loss.backward()
        for k, p in params.items():
            if p.grad is not None:
                total[k] += p.grad.detach()
    model.zero_grad(set_to_none=True)
    return {k: total[k].detach().cpu() if k in total else torch.zeros_like(v) for k, v in like.items()}
