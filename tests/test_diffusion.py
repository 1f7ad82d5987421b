"""Tests for fedsim/models/diffusion.py (schedule, loss, samplers) and the UNet's state_dict.

The schedule is checked against diffusers and against a 2-step schedule small
enough to compute by hand; the loss with a noise predictor that is exact by
construction; DDIM (eta=0) for determinism given the initial noise.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from fedsim.models.diffusion import NoiseSchedule, diffusion_loss, predict_eps, sample
from fedsim.models.networks import build_model

pytestmark = pytest.mark.usefixtures('one_thread')

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]


# --- NoiseSchedule ---

@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_alpha_bar_shape_monotone_range_and_diffusers(beta_schedule):
    ab = NoiseSchedule(1000, beta_schedule).alpha_bar
    assert ab.shape == (1000,)
    assert (ab.diff() < 0).all()  # strictly decreasing: more noise at every step
    assert ((ab > 0) & (ab < 1)).all()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule).alphas_cumprod
    assert torch.equal(ab, ref.float())


def test_alpha_bar_two_steps_by_hand():
    # linear betas = linspace(1e-4, 0.02, 2) = [1e-4, 0.02]; abar = [0.9999, 0.9999 * 0.98]
    ab = NoiseSchedule(2).alpha_bar
    assert ab.tolist() == pytest.approx([0.9999, 0.979902], abs=1e-7)


def test_schedule_is_a_plain_object_not_a_module():
    sched = NoiseSchedule(10)
    assert not isinstance(sched, nn.Module)
    assert hash(sched) == hash(NoiseSchedule(10))  # frozen dataclass


def test_add_noise_by_hand():
    sched = NoiseSchedule(2)  # abar = [0.9999, 0.979902]
    x0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[-1.0, 0.0], [0.0, 1.0]]]])  # (2, 1, 2, 2)
    eps = torch.tensor([[[[0.0, 1.0], [-1.0, 2.0]]], [[[1.0, 1.0], [-2.0, 0.0]]]])
    t = torch.tensor([0, 1])
    a0, s0 = math.sqrt(0.9999), math.sqrt(1 - 0.9999)  # s0 = 0.01
    a1, s1 = math.sqrt(0.979902), math.sqrt(1 - 0.979902)
    expected = torch.tensor([
        [[[a0 * 1 + s0 * 0, a0 * 2 + s0 * 1], [a0 * 3 - s0 * 1, a0 * 4 + s0 * 2]]],
        [[[-a1 + s1 * 1, 0 + s1 * 1], [0 - s1 * 2, a1 * 1 + 0]]],
    ])
    out = sched.add_noise(x0, eps, t)
    assert out.shape == (2, 1, 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)  # float32


# --- diffusion_loss ---

class PerfectPredictor(nn.Module):
    """Knows x0, so recovers eps exactly: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def __init__(self, x0: torch.Tensor, sched: NoiseSchedule) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_class_embeds=None)
        self.x0, self.sched = x0, sched

    def forward(self, x_t, t, class_labels=None):
        a = self.sched.alpha_bar[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x_t - a.sqrt() * self.x0) / (1 - a).sqrt())


class ZeroPredictor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_class_embeds=None)

    def forward(self, x_t, t, class_labels=None):
        return SimpleNamespace(sample=torch.zeros_like(x_t))


def test_perfect_predictor_has_zero_loss():
    sched = NoiseSchedule(1000)
    x0 = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = PerfectPredictor(x0, sched)
    loss = diffusion_loss(model, sched, x0, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and float(loss) < 1e-8
    # and the same at the extremes of t, where 1 - abar is smallest / largest
    t = torch.tensor([0, 1, 998, 999])
    assert float(diffusion_loss(model, sched, x0, t=t, generator=torch.Generator().manual_seed(2))) < 1e-8


def test_zero_predictor_loss_is_mean_eps_squared_per_sample():
    sched = NoiseSchedule(10)
    x0 = torch.zeros(3, 1, 2, 2)
    eps = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)])  # (3, 1, 2, 2)
    per = diffusion_loss(ZeroPredictor(), sched, x0, eps=eps, t=torch.tensor([0, 5, 9]), reduction="none")
    assert per.shape == (3,)
    assert per.tolist() == [1.0, 4.0, 9.0]
    mean = diffusion_loss(ZeroPredictor(), sched, x0, eps=eps, t=torch.tensor([0, 5, 9]))
    assert float(mean) == pytest.approx(14 / 3)


def test_reduction_none_shape_and_same_draws_as_mean():
    sched = NoiseSchedule(100)
    model = build_model("ddpm-small", (1, 8, 8), 10)
    x0 = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        per = diffusion_loss(model, sched, x0, generator=torch.Generator().manual_seed(5), reduction="none")
        mean = diffusion_loss(model, sched, x0, generator=torch.Generator().manual_seed(5))
    assert per.shape == (3,) and (per > 0).all()
    torch.testing.assert_close(per.mean(), mean)


# --- samplers ---

class TanhPredictor(nn.Module):
    """A deterministic stand-in eps-network; on its first call it re-seeds ``reseed``
    (the sampler's generator), i.e. right after the initial noise was drawn."""

    def __init__(self, reseed: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_class_embeds=None)
        self.reseed, self.calls = reseed, 0

    def forward(self, x_t, t, class_labels=None):
        if self.calls == 0 and self.reseed is not None:
            self.reseed.manual_seed(12345)
        self.calls += 1
        return SimpleNamespace(sample=0.5 * torch.tanh(x_t) + 1e-3 * t.view(-1, 1, 1, 1).float())


def _draw(sampler: str, seed: int, reseed_after_init: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    model = TanhPredictor(g if reseed_after_init else None)
    out = sample(model, NoiseSchedule(100), 3, (1, 4, 4), generator=g, sampler=sampler, steps=10, eta=0.0)
    assert model.calls == 10
    return out


def test_ddim_same_seed_same_images():
    a, b = _draw("ddim", 0, False), _draw("ddim", 0, False)
    assert a.shape == (3, 1, 4, 4) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, _draw("ddim", 1, False))  # other initial noise, other images


def test_ddim_eta0_ignores_generator_after_initial_noise():
    assert torch.equal(_draw("ddim", 0, False), _draw("ddim", 0, True))


def test_ddpm_ancestral_does_use_generator_after_initial_noise():
    # control for the test above: the re-seeding trick does change an ancestral chain
    assert torch.equal(_draw("ddpm", 0, False), _draw("ddpm", 0, False))
    assert not torch.equal(_draw("ddpm", 0, False), _draw("ddpm", 0, True))


def test_sample_with_real_unet_shape_and_range():
    model = build_model("ddpm-small", (1, 8, 8), 10)
    out = sample(model, NoiseSchedule(100), 2, (1, 8, 8), generator=torch.Generator().manual_seed(0), steps=3)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert out.min() >= -1 and out.max() <= 1


# --- the UNet holds weights only ---

@pytest.mark.parametrize("conditional", [False, True])
def test_unet_state_dict_is_parameters_only(conditional):
    """Schedule constants never transmitted: every state_dict entry is a learnable parameter."""
    model = build_model("ddpm-small", (1, 8, 8), 10, conditional=conditional)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}
    assert list(model.buffers()) == []
    assert not any("alpha" in k or "beta" in k for k in model.state_dict())


def test_cnn_state_dict_is_parameters_only():
    model = build_model("cnn", (1, 8, 8), 10)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


def test_build_model_is_seeded():
    a = build_model("ddpm-small", (1, 8, 8), 10, seed=3).state_dict()
    b = build_model("ddpm-small", (1, 8, 8), 10, seed=3).state_dict()
    c = build_model("ddpm-small", (1, 8, 8), 10, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_conditional_unet_has_class_embedding_and_uses_labels():
    uncond = build_model("ddpm-small", (1, 8, 8), 10)
    cond = build_model("ddpm-small", (1, 8, 8), 10, conditional=True)
    assert not any("class_embedding" in k for k in uncond.state_dict())
    assert cond.state_dict()["class_embedding.weight"].shape[0] == 10
    x = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor([10, 500])
    with torch.no_grad():
        y0 = predict_eps(cond, x, t, torch.tensor([0, 0]))
        y1 = predict_eps(cond, x, t, torch.tensor([1, 1]))
        u_with = predict_eps(uncond, x, t, torch.tensor([1, 1]))  # labels ignored, not an error
        u_without = predict_eps(uncond, x, t)
    assert y0.shape == (2, 1, 8, 8)
    assert not torch.allclose(y0, y1)
    assert torch.equal(u_with, u_without)
    loss = diffusion_loss(cond, NoiseSchedule(100), x, torch.tensor([3, 7]),
                          generator=torch.Generator().manual_seed(0), reduction="none")
    assert loss.shape == (2,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("teacher_t, c", [(1000, 8), (100, 4), (64, 16)])
def test_sfddm_student_noisy_inputs_are_the_teachers_exactly(teacher_t, c):
    """The student of stride c: q_sample(x0, t, eps) == the teacher's q_sample(x0, c t, eps), bit for bit."""
    from fedsim.models.diffusion import NoiseSchedule

    teacher = NoiseSchedule(teacher_t, "squaredcos_cap_v2")
    student = NoiseSchedule(teacher_t // c, "squaredcos_cap_v2", stride=c)
    assert student.teacher == teacher and student.alpha_bar.shape == (teacher_t // c,)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, teacher_t // c // 2, teacher_t // c - 2, teacher_t // c - 1])
    assert torch.equal(student.add_noise(x0, eps, t), teacher.add_noise(x0, eps, c * t))
    # diffusers rebuilds alpha_bar from the student's betas: the same schedule to float rounding
    torch.testing.assert_close(student.ddim().alphas_cumprod.double(), student.alpha_bar.double(), rtol=1e-5, atol=1e-7)
    assert student.ddpm().config.num_train_timesteps == teacher_t // c
