"""One client's round, computed in-process: what the server would observe, plus the secrets.

The Python API's entry point (no simulation needed): give a model, your own images and
labels, and how the client trains; get back the ``Observation`` the server sees and the
``Secrets`` (labels, noise, timesteps) that only metrics may compare against.

Training follows fedsim's clients (fedsim/models/train.py) with two attack-relevant choices made
explicit: plain SGD (the simulation attack and AGIC assume it), and a fixed batch
assignment (step k of every epoch takes images [k b, (k+1) b); the observation's config says
optimizer "sgd", momentum 0, shuffle "fixed", and Secrets.batches holds that order). Diffusion clients draw
fresh (eps, t) for every step from ``generator``; ``t_mode = "shared"`` gives one t per
step for the whole minibatch (GIDM's setting), "per-sample" one t per image (fedsim's
training). Secrets.eps is (E, N, C, H, W) and Secrets.t (E, N): the noise image i saw in
epoch e (E = 1 for FedSGD, squeezed to (N, C, H, W) and (N,)).

``dp_sgd = DpSgd(clip, z, seed)`` trains with Opacus's DP-SGD (attacks/defenses.py): its
per-sample gradients come from torch.func (``force_functorch``): Opacus's hook mode gave wrong
per-sample gradients for two convolutions of the diffusers UNet's mid block (relative error
1.0, measured); FedSGD sends the privatised gradient (the optimizer's pre-step), FedAvg the
weights after its privatised steps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from dataclasses import dataclass

from attacks.threat_model import Secrets
from fedsim.models.train import DiffusionTask, Task
from fedsim.records.observations import Observation


@dataclass(frozen=True)
class DpSgd:
    clip: float  # per-sample L2 clip norm
    noise_multiplier: float  # z: noise sd on the summed clipped gradients is z * clip
    seed: int  # of the noise generator


def dp_sgd_wrap(model: nn.Module, opt: torch.optim.Optimizer, dp: DpSgd, batch: int):
    """(GradSampleModule over ``model``, DPOptimizer over ``opt``)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    wrapped = GradSampleModule(model, force_functorch=True)
    if hasattr(model, "config"):  # diffusers models: predict_eps reads model.config
        wrapped.config = model.config
    return wrapped, DPOptimizer(opt, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.clip,
                                expected_batch_size=batch, generator=torch.Generator().manual_seed(dp.seed))


def plan(num_images: int, local_steps: int) -> tuple[int, int, int]:
    """(epochs E, steps per epoch K, minibatch b) for ``local_steps`` SGD steps over N images:
    K = min(N, 4) when local_steps > 1, E = local_steps / K, b = ceil(N / K). For 8 steps and
    N = 8 this is 2 epochs x 4 steps of 2 images (the FedAvg setting of the peer numbers)."""
    if local_steps <= 1:
        return 1, 1, num_images
    k = min(num_images, 4, local_steps)
    if local_steps % k:
        k = 1
    return local_steps // k, k, math.ceil(num_images / k)


def client_exchange(model: nn.Module, task: Task, images: torch.Tensor, labels: torch.Tensor, *,
                    mode: str = "fedsgd", lr: float = 0.05, local_steps: int = 1,
                    t_mode: str = "shared", generator: torch.Generator,
                    server_round: int = 1, partition_id: int = 0,
                    dp_sgd: DpSgd | None = None) -> tuple[Observation, Secrets]:
    """The server's view of one client update on (images (N, C, H, W), labels (N,)).

    mode="fedsgd": the gradient of the mean loss over all N images (one step).
    mode="fedavg": ``local_steps`` SGD steps with lr (see ``plan``); the reply is w_local."""
    n = images.shape[0]
    sent = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = copy.deepcopy(model).train()
    epochs, k_steps, b = plan(n, local_steps) if mode == "fedavg" else (1, 1, n)
    eps_all, t_all = [], []
    opt = torch.optim.SGD(local.parameters(), lr=lr)
    trained = local
    if dp_sgd is not None:
        trained, opt = dp_sgd_wrap(local, opt, dp_sgd, b)
    grads = None
    for _ in range(epochs):
        eps_e = torch.empty_like(images)
        t_e = torch.empty(n, dtype=torch.long)
        for k in range(k_steps):
            idx = slice(k * b, min((k + 1) * b, n))
            x, y = images[idx], labels[idx]
            extra = {}
            if isinstance(task, DiffusionTask):
                m = x.shape[0]
                if t_mode == "shared":
                    t = torch.randint(0, task.schedule.timesteps, (1,), generator=generator).expand(m).clone()
                else:
                    t = torch.randint(0, task.schedule.timesteps, (m,), generator=generator)
                extra = {"eps": torch.randn(x.shape, generator=generator), "t": t}
                eps_e[idx], t_e[idx] = extra["eps"], extra["t"]
            loss = task.loss(trained, x, y, generator=None, **extra).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mode == "fedsgd":
                if dp_sgd is not None:
                    opt.pre_step()  # clip per sample, add noise, average: p.grad is what DP-SGD would apply
                grads = {name: p.grad.detach().clone() for name, p in local.named_parameters()}
            else:
                opt.step()
        eps_all.append(eps_e)
        t_all.append(t_e)
    if mode == "fedsgd":
        received, payload = grads, "gradient"
    else:
        received, payload = {k: v.detach().clone() for k, v in local.state_dict().items()}, "weights"
    config = {"lr": lr, "local-epochs": epochs, "batch-size": b, "optimizer": "sgd", "momentum": 0.0,
              "grad-clip": 0.0, "shuffle": "fixed"}
    obs = Observation(server_round=server_round, partition_id=partition_id, sent=sent, received=received,
                      payload=payload, num_examples=n, metrics={"steps": epochs * k_steps}, config=config)
    batches = tuple(torch.arange(k * b, min((k + 1) * b, n)) for _ in range(epochs) for k in range(k_steps))
    secrets = Secrets(labels=labels.clone(), batches=batches)
    if isinstance(task, DiffusionTask):
        eps, t = torch.stack(eps_all), torch.stack(t_all)
        secrets = Secrets(labels=labels.clone(), eps=eps[0] if epochs == 1 else eps, t=t[0] if epochs == 1 else t,
                          batches=batches)
    return obs, secrets
