"""GIDM: Gradient Inversion of federated Diffusion Models (Huang, Hong, Chen, Roos, arXiv:2405.20380).

The client's update is the gradient of the DDPM loss (fedsim/models/diffusion.py, eps-prediction)

    L(theta; x0) = mean || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2,

with the noise eps and timestep t known to the attacker (GIDM's threat model). The distance
is plain L2, D(g, g*) = sum_l ||g_l - g*_l||^2 (no cosine, no layer weights, no TV).

- Phase 1 (latent search): x = G(z), G a *trained* prior of the same architecture and
  schedule (trained on data disjoint from the victim's, attacks/prior.py), run as a
  deterministic DDIM sampler (eta = 0) kept differentiable through all its steps; Adam on z.
- Phase 2 (pixel fine-tuning): from x = G(z*), Adam on the pixels.
``phases`` = "both" | "latent" | "pixel" (pixel-only is DLG/IG-style matching adapted to the
diffusion loss: the baseline GIDM must beat). Box projection and TV are options (off in the
official code). The official code uses pred_v; fedsim's clients predict eps, so the attack
differentiates fedsim's own loss. On a FedAvg update g* = -Delta w / (lr E K) (AGIC's
approximation); with known noise per local epoch (E, N, ...) the dummy loss averages the epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Attack, AttackConfig, AttackError, Clock, Reconstruction, Victim, as_list, random_images
from attacks.objectives import Functional, l2_distance, observed_gradient, total_variation
from attacks.optimize import adam
from attacks.threat_model import AttackInput
from fedsim.models.diffusion import NoiseSchedule, predict_eps, student_schedule
from fedsim.models.networks import load_pretrained


@dataclass(frozen=True)
class GIDMConfig(AttackConfig):
    phases: str = "both"  # both | latent | pixel
    latent_iterations: int = 2500
    pixel_iterations: int = 5000
    lr: float = 0.01
    sampler_steps: int = 16  # DDIM steps of the prior G
    box: bool = False
    tv: float = 0.0
    prior: str = ""  # overrides the threat model's prior path
    t_offset: int = 0  # experiments only: use the known t shifted by this (mod T), "GIDM with a wrong t"


def ddim_generate(prior: nn.Module, schedule: NoiseSchedule, z: torch.Tensor, steps: int,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0), differentiable in z:

        x0^ = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), clipped to [-1, 1],
        x_{t'} = sqrt(abar_{t'}) x0^ + sqrt(1 - abar_{t'}) eps_theta(x_t, t),

    over diffusers' DDIMScheduler timesteps (``steps`` of them). z: (N, C, H, W) ~ N(0, I);
    returns x0 (N, C, H, W) in [-1, 1]."""
    sched = schedule.ddim()
    sched.set_timesteps(steps)
    abar = sched.alphas_cumprod.float()
    stride = schedule.timesteps // steps
    x = z
    x0 = z
    for t in sched.timesteps.tolist():
        a_t = abar[t]
        a_prev = abar[t - stride] if t - stride >= 0 else sched.final_alpha_cumprod.float()
        eps = predict_eps(prior, x, torch.full((x.shape[0],), t, dtype=torch.long), labels)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x0


@dataclass(frozen=True)
class Prior:
    """Phase 1's generator G(z): ``model`` sampled with deterministic DDIM in ``steps`` steps over
    ``schedule``: the victim's schedule for a DDPM prior, or, for an SFDDM student (fedsim
    distill), the student's own K-step schedule."""

    model: nn.Module
    schedule: NoiseSchedule
    steps: int

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return ddim_generate(self.model, self.schedule, z, self.steps, labels)


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


class GIDM(Attack):
    name = "gidm"
    Config = GIDMConfig

    # -- pieces GIDM+ overrides --------------------------------------------------------------
    def noise(self, inp: AttackInput, batch: int, generator: torch.Generator):
        """(eps, t) the dummy loss uses; GIDM requires them known."""
        if inp.eps is None or inp.t is None:
            raise AttackError("gidm needs the client's noise eps and timesteps t (threat model eps_known and "
                              "t_known); use gidm_plus when they are private")
        t = inp.t.long()
        if self.cfg.t_offset:
            t = (t + self.cfg.t_offset) % self.T
        return inp.eps.float(), t

    def load_prior(self, victim: Victim, inp_prior: str) -> Prior | None:
        if self.cfg.phases == "pixel":
            return None
        path = self.cfg.prior or inp_prior
        if not path:
            raise AttackError("gidm phase 1 needs a trained prior (threat model prior = PATH, or the attack's "
                              "prior option); phases = 'pixel' runs without one")
        model = load_pretrained(path).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        student = student_schedule(path)
        if student is None:
            return Prior(model, victim.task.schedule, self.cfg.sampler_steps)
        return Prior(model, student, student.timesteps)  # an SFDDM student samples in its own K steps

    # -- the attack ------------------------------------------------------------------------------
    def dummy_loss(self, fn: Functional, x: torch.Tensor, y, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean DDPM loss of the dummies; eps (E, N, ...) and t (E, N) average over local epochs."""
        if eps.dim() == x.dim() + 1:
            return sum(fn.loss(x, y, eps=e, t=tt) for e, tt in zip(eps, t)) / eps.shape[0]
        return fn.loss(x, y, eps=eps, t=t)

    def reconstruct(self, victim: Victim, inputs: AttackInput | Sequence[AttackInput], *,
                    generator: torch.Generator, prior_path: str = "") -> Reconstruction:
        inp = as_list(inputs)[0]
        if not victim.is_diffusion:
            raise AttackError(f"{self.name} attacks diffusion models; use ig, dlg, simulation or agic for classifiers")
        if self.cfg.phases not in ("both", "latent", "pixel"):
            raise AttackError(f"unknown phases '{self.cfg.phases}'; known: both, latent, pixel")
        clock = Clock(self.cfg.log_every)
        fn = Functional(victim, inp.sent, inp.bn_mode)
        target = observed_gradient(inp, fn.names)
        batch = self.batch_size(inp)
        prior = self.load_prior(victim, prior_path)
        schedule = victim.task.schedule
        self.T = schedule.timesteps
        y = inp.labels
        state = self.start(fn, target, inp, batch, generator, prior, schedule, y, clock)
        state["batch"] = batch
        return self.finish(victim, fn, target, state, prior, schedule, y, clock, generator)

    def start(self, fn, target, inp, batch, generator, prior, schedule, y, clock) -> dict:
        """The loss's noise before the main phases. GIDM: the known eps and t, nothing free.
        GIDM+ returns free tensors (optimised with x), a penalty on them, and a chosen t."""
        eps, t = self.noise(inp, batch, generator)
        return {"eps": eps, "t": t, "free": [], "penalty": lambda: 0.0, "iteration": 0, "y": y}

    def objective(self, fn, target, x, state) -> torch.Tensor:
        d = l2_distance(fn.grads(self.dummy_loss(fn, x, state["y"], state["eps"], state["t"])), target)
        return d + state["penalty"]() + (self.cfg.tv * total_variation(x) if self.cfg.tv else 0.0)

    def finish(self, victim, fn, target, state, prior, schedule, y, clock, generator) -> Reconstruction:
        lo, hi = victim.value_range
        box = (lo, hi) if self.cfg.box else None
        free = state["free"]
        free_lrs = state.get("free_lrs", [])
        state["y"] = y
        n = state["batch"]
        x = state.get("x")
        z = state.get("z")
        if self.cfg.phases != "pixel":
            if z is None:
                z = torch.randn((n, *victim.shape), generator=generator)
            z = z.clone().requires_grad_(True)
            (z_best, *free_best), _ = adam(
                lambda: self.objective(fn, target, prior(z, y), state),
                [z, *free], iterations=self.cfg.latent_iterations, lr=[self.cfg.lr, *free_lrs], signed=False,
                decay=False, clock=clock, start=state["iteration"])
            self._restore(free, free_best)
            state["iteration"] += self.cfg.latent_iterations
            with torch.no_grad():
                x = prior(z_best, y)
        if self.cfg.phases != "latent":
            if x is None:
                x = random_images(n, victim.shape, victim.value_range, generator)
            v, image = self.pixel_variable(x.detach(), state, schedule)
            v_best = self.pixel_phase(fn, target, state, v, image, box, clock, self.cfg.pixel_iterations)
            with torch.no_grad():
                x = image(v_best)
        return Reconstruction(images=x.detach().clamp(lo, hi), labels=y, history=clock.history,
                              iterations=clock.iterations, extras=self.extras(state), wall_s=clock.elapsed())

    def pixel_phase(self, fn, target, state, v, image, box, clock, iterations: int) -> torch.Tensor:
        """Adam on phase 2's variable and the free tensors; returns the best variable (the free
        tensors are left at their best)."""
        free, free_lrs = state["free"], state.get("free_lrs", [])
        (v_best, *free_best), _ = adam(
            lambda: self.objective(fn, target, image(v), state), [v, *free],
            iterations=iterations, lr=[self.cfg.lr, *free_lrs], signed=False, decay=False,
            boxes=[box if image is _identity else None] + [None] * len(free), clock=clock, start=state["iteration"])
        self._restore(free, free_best)
        state["iteration"] += iterations
        return v_best

    def pixel_variable(self, x: torch.Tensor, state: dict, schedule: NoiseSchedule):
        """Phase 2's free tensor and its image: GIDM optimises the pixels themselves."""
        return x.clone().requires_grad_(True), _identity

    @staticmethod
    def _restore(free: list[torch.Tensor], best: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for v, b in zip(free, best):
                v.copy_(b)

    def extras(self, state: dict) -> dict:
        return {}
