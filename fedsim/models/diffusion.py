"""Noise schedule, DDPM loss and samplers (DDPM ancestral, DDIM).

The schedule is a plain object rebuilt from the config on every node: it is
never part of a state_dict, so it is never averaged, compressed or attacked.
Schedules and sampling steps come from diffusers' DDPMScheduler / DDIMScheduler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # diffusers is imported on first use: a CNN-only process never pays for it
    from diffusers import DDIMScheduler, DDPMScheduler


@dataclass(frozen=True)
class NoiseSchedule:
    """q(x_t | x_0) of Ho et al. 2020 with T steps.

    alpha_bar: (T,) cumulative products of (1 - beta_t), a plain attribute.
    stride c > 1: an SFDDM student's schedule (Hong et al. 2025): T steps that are every c-th step
    of a teacher with T x c steps, alpha_bar'_t = alpha_bar_{c t} taken as the teacher stores it, so
    add_noise(x0, eps, t) is exactly the teacher's add_noise(x0, eps, c t); its samplers get the
    betas 1 - alpha_bar'_t / alpha_bar'_{t-1} (diffusers' trained_betas).
    """

    timesteps: int
    beta_schedule: str = "linear"
    stride: int = 1

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    @property
    def teacher(self) -> NoiseSchedule:
        """The schedule this one strides over (itself when stride is 1)."""
        return NoiseSchedule(self.timesteps * self.stride, self.beta_schedule)

    @property
    def scheduler_config(self) -> dict:
        if self.stride == 1:
            return dict(num_train_timesteps=self.timesteps, beta_schedule=self.beta_schedule,
                        clip_sample=True, prediction_type="epsilon")
        return dict(num_train_timesteps=self.timesteps, trained_betas=self.betas.tolist(),
                    clip_sample=True, prediction_type="epsilon")

    @property
    def alpha_bar(self) -> torch.Tensor:
        if self.stride == 1:
            return _alphas_cumprod(self.timesteps, self.beta_schedule)
        return self.teacher.alpha_bar[::self.stride][:self.timesteps]

    @property
    def betas(self) -> torch.Tensor:
        """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (alpha_bar_{-1} = 1), in float64."""
        a = self.alpha_bar.double()
        return 1 - a / torch.cat([a.new_ones(1), a[:-1]])

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (Ho et al. 2020, eq. 4).

        x0, eps: (B, C, H, W); t: (B,) integer timesteps in [0, T)."""
        a = self.alpha_bar.to(x0.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def ddpm(self) -> DDPMScheduler:
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.scheduler_config)

    def ddim(self) -> DDIMScheduler:
        from diffusers import DDIMScheduler

        return DDIMScheduler(**self.scheduler_config)


SCHEDULE_FILE = "fedsim_schedule.json"
"""Next to an SFDDM student's weights (fedsim distill): the teacher's T, the stride and K."""


def student_meta(model_dir: str | Path) -> dict | None:
    """What ``fedsim distill`` recorded beside an SFDDM student (schedule, server data, loss,
    epochs, lr), or None for a model without ``fedsim_schedule.json`` (a plain DDPM)."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir / "unet"):
        if (folder / SCHEDULE_FILE).is_file():
            return json.loads((folder / SCHEDULE_FILE).read_text())
    return None


def student_schedule(model_dir: str | Path) -> NoiseSchedule | None:
    """The schedule an SFDDM student was distilled for (K steps, stride c over the teacher's
    beta schedule), or None for a plain DDPM."""
    meta = student_meta(model_dir)
    return None if meta is None else NoiseSchedule(int(meta["steps"]), meta["beta_schedule"], stride=int(meta["stride"]))


_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _alphas_cumprod(timesteps: int, beta_schedule: str) -> torch.Tensor:
    key = (timesteps, beta_schedule)
    if key not in _CACHE:
        from diffusers import DDPMScheduler

        sched = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule)
        _CACHE[key] = sched.alphas_cumprod.clone().float()
    return _CACHE[key]


def predict_eps(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """eps_theta(x_t, t[, y]); class labels only for class-conditional UNets."""
    conditional = getattr(model.config, "num_class_embeds", None) is not None
    return model(x_t, t, class_labels=labels if conditional else None).sample


def diffusion_loss(model: nn.Module, sched: NoiseSchedule, x0: torch.Tensor,
                   labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                   eps: torch.Tensor | None = None, t: torch.Tensor | None = None,
                   reduction: str = "mean") -> torch.Tensor:
    """DDPM simple loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, eq. 14).

    x0: (B, C, H, W) in [-1, 1]. eps and t are drawn from ``generator`` unless
    given (attacks and fixed-noise evaluation pass them). reduction="none"
    gives (B,) per-sample losses (mean over C, H, W), needed by membership and
    unlearning metrics."""
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, sched.timesteps, (b,), generator=generator).to(x0.device)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    pred = predict_eps(model, sched.add_noise(x0, eps, t), t, labels)
    per_sample = (pred - eps).pow(2).flatten(1).mean(1)
    return per_sample if reduction == "none" else per_sample.mean()


@torch.no_grad()
def sample(model: nn.Module, sched: NoiseSchedule, n: int, shape: tuple[int, int, int], *,
           generator: torch.Generator, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
           labels: torch.Tensor | None = None, device: str = "cpu") -> torch.Tensor:
    """Draw n images (n, C, H, W) in [-1, 1].

    sampler="ddim" with eta=0 is deterministic given the initial noise
    (Song et al. 2021, eq. 12); "ddpm" is ancestral sampling (Ho et al. 2020, alg. 2)."""
    scheduler = sched.ddim() if sampler == "ddim" else sched.ddpm()
    scheduler.set_timesteps(steps)
    x = torch.randn((n, *shape), generator=generator).to(device)
    if labels is not None:
        labels = labels.to(device)
    for t in scheduler.timesteps:
        tt = torch.full((n,), int(t), device=device, dtype=torch.long)
        eps = predict_eps(model, x, tt, labels)
        kwargs = {"eta": eta} if sampler == "ddim" else {}
        x = scheduler.step(eps, int(t), x, generator=generator, **kwargs).prev_sample
    return x.clamp(-1, 1)
