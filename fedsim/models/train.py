"""Local training, one-batch gradients (FedSGD) and per-sample losses.

A *task* turns (model, x, y) into per-sample losses: the DDPM noise-prediction
loss for diffusion models, cross-entropy for classifiers. Everything here is
plain PyTorch: no Flower, no Ray, testable in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models.diffusion import NoiseSchedule, diffusion_loss


@dataclass(frozen=True)
class DiffusionTask:
    schedule: NoiseSchedule

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator | None, eps: torch.Tensor | None = None,
             t: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) per-sample DDPM losses."""
        return diffusion_loss(model, self.schedule, x, y, generator=generator, eps=eps, t=t,
                              reduction="none")


@dataclass(frozen=True)
class ClassifierTask:
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             generator: torch.Generator | None = None, **_: object) -> torch.Tensor:
        """(B,) per-sample cross-entropy."""
        return F.cross_entropy(model(x), y, reduction="none")


Task = DiffusionTask | ClassifierTask


def make_task(model_name: str, timesteps: int = 1000, beta_schedule: str = "linear", stride: int = 1) -> Task:
    if model_name.startswith("ddpm"):
        return DiffusionTask(NoiseSchedule(timesteps, beta_schedule, stride=stride))
    return ClassifierTask()


def run_task(cfg) -> Task:
    """The task of a RunConfig: its model's loss, for a diffusion model over the config's schedule
    (``timesteps``, ``beta-schedule``, ``schedule-stride``)."""
    return make_task(cfg.model, cfg.timesteps, cfg.beta_schedule, cfg.schedule_stride)


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over all steps
    steps: int
    num_examples: int


class Step(NamedTuple):
    """What one local step used: ``indices`` (b,) into the images it was given, and for a
    diffusion task the timesteps ``t`` (b,) and noise ``eps`` (b, C, H, W) drawn for them
    (None for classifiers). Collected only when a caller passes ``trace`` (simulation secrets)."""

    indices: torch.Tensor
    t: torch.Tensor | None = None
    eps: torch.Tensor | None = None


def draw_noise(task: Task, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The (t, eps) a diffusion step trains on, drawn from ``generator`` in the order and shapes
    diffusion_loss would draw them (t: (b,) first, then eps: (b, C, H, W)), so drawing them here
    leaves the random stream unchanged; on CPU. {} for a classifier."""
    if not isinstance(task, DiffusionTask):
        return {}
    t = torch.randint(0, task.schedule.timesteps, (x.shape[0],), generator=generator)
    return {"t": t, "eps": torch.randn(x.shape, generator=generator)}


def _step_loss(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
               generator: torch.Generator, trace: list[Step] | None) -> torch.Tensor:
    """Mean loss of one step on (x, y) = images[idx]; appends the step to ``trace`` if given."""
    noise = draw_noise(task, x, generator)
    if trace is not None:
        trace.append(Step(idx.detach().cpu().clone(), noise.get("t"), noise.get("eps")))
    kw = {k: v.to(x.device) for k, v in noise.items()}
    return task.loss(model, x, y, generator=generator, **kw).mean()


SHUFFLE = "per-epoch"  # train_local's batch order: a fresh torch.randperm of the samples every local epoch


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.0):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_local(model: nn.Module, task: Task, images: torch.Tensor, labels: torch.Tensor, *,
                epochs: int, batch_size: int, lr: float, optimizer: str = "adam",
                momentum: float = 0.0, grad_clip: float = 0.0, generator: torch.Generator,
                trace: list[Step] | None = None, proximal_mu: float = 0.0,
                correction: dict[str, torch.Tensor] | None = None) -> TrainStats:
    """``epochs`` passes over (images (N, C, H, W), labels (N,)), reshuffled every epoch by
    ``generator`` (``SHUFFLE``; a client's generator comes from (seed, "train", round, client)),
    batches of ``batch_size`` in that order, the last one smaller; a fresh optimizer each call
    (clients keep no optimizer state: momentum and Adam's moments start at zero every round);
    ``grad_clip`` > 0 clips each step's gradient norm. ``trace``: a list that gets one
    ``Step`` per local step (which images, and the diffusion noise), for simulation secrets.
    ``proximal_mu`` > 0 (FedProx): the objective is loss + mu/2 ||w - w_0||^2 with w_0 the weights
    given, added as its gradient mu (w - w_0) before clipping; the reported loss is the task's alone.
    ``correction`` (SCAFFOLD's c - c_i, by parameter name; fedsim/models/scaffold.py) is added to
    every step's gradient, before clipping."""
    model.train()
    opt = make_optimizer(model, optimizer, lr, momentum)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    device = next(model.parameters()).device
    n = images.shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x, y = images[idx].to(device), labels[idx].to(device)
            loss = _step_loss(model, task, x, y, idx, generator, trace)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if anchor is not None:
                _add_proximal(model, anchor, proximal_mu)
            if correction is not None:
                _add_correction(model, correction)
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n)


@torch.no_grad()
def _add_proximal(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> None:
    """grad += mu (w - w_0): the gradient of mu/2 ||w - w_0||^2, for every parameter that has a gradient."""
    for p, a in zip(model.parameters(), anchor):
        if p.grad is not None:
            p.grad.add_(p - a, alpha=mu)


@torch.no_grad()
def _add_correction(model: nn.Module, correction: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if p.grad is not None and name in correction:
            p.grad.add_(correction[name].to(p.device, p.dtype))


def batch_gradient(model: nn.Module, task: Task, images: torch.Tensor, labels: torch.Tensor, *,
                   batch_size: int, generator: torch.Generator, trace: list[Step] | None = None
                   ) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """FedSGD: the gradient of the mean loss on one random batch, per parameter.
    ``trace``: a list that gets the one ``Step`` (the batch's indices, in order, and its noise)."""
    model.train()
    device = next(model.parameters()).device
    idx = torch.randperm(images.shape[0], generator=generator)[:batch_size]
    model.zero_grad(set_to_none=True)
    loss = _step_loss(model, task, images[idx].to(device), labels[idx].to(device), idx, generator, trace)
    loss.backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for name, p in model.named_parameters()}
    return grads, TrainStats(loss=float(loss.detach()), steps=1, num_examples=len(idx))


@torch.no_grad()
def per_sample_losses(model: nn.Module, task: Task, images: torch.Tensor, labels: torch.Tensor, *,
                      generator: torch.Generator, batch_size: int = 256) -> torch.Tensor:
    """(N,) losses. For diffusion, (eps, t) per sample are drawn once from
    ``generator`` so the same generator seed gives a fixed, comparable probe."""
    model.eval()
    device = next(model.parameters()).device
    n = images.shape[0]
    extra = {}
    if isinstance(task, DiffusionTask):
        extra["t"] = torch.randint(0, task.schedule.timesteps, (n,), generator=generator)
        extra["eps"] = torch.randn(images.shape, generator=generator)
    out = []
    for s in range(0, n, batch_size):
        kw = {k: v[s:s + batch_size].to(device) for k, v in extra.items()}
        out.append(task.loss(model, images[s:s + batch_size].to(device),
                             labels[s:s + batch_size].to(device), generator=None, **kw).cpu())
    return torch.cat(out)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        pred = model(images[s:s + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == labels[s:s + batch_size]).sum())
    return correct / max(images.shape[0], 1)
