"""SFDDM's distillation objective (fedsim/models/distill.py) on ddpm-tiny with 8x8 digits."""

from __future__ import annotations

import copy

import pytest
import torch

from fedsim.models.diffusion import NoiseSchedule, predict_eps
from fedsim.models.distill import hidden_features, sfddm_loss
from fedsim.models.networks import build_model


def tiny(seed: int):
    return build_model("ddpm-tiny", (1, 8, 8), 10, seed=seed)


def test_hidden_features_are_the_input_of_the_final_convolution():
    model = tiny(0)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with hidden_features(model) as seen:
        out = predict_eps(model, x, t)
    assert len(seen) == 1
    torch.testing.assert_close(model.conv_out(seen[0]), out)


def test_the_student_is_scored_at_t_and_the_teacher_at_c_t():
    """A student that is the teacher itself, with t fed as c t, scores 0; at t it does not."""
    teacher = tiny(0)
    sched = NoiseSchedule(4, "squaredcos_cap_v2", stride=4)

    class Strided(torch.nn.Module):  # the teacher, asked at c t
        def __init__(self, net):
            super().__init__()
            self.net, self.config, self.conv_out = net, net.config, net.conv_out

        def forward(self, x, t, class_labels=None):
            return self.net(x, t * 4, class_labels=class_labels)

    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    same = sfddm_loss(Strided(teacher), teacher, sched, x0, generator=torch.Generator().manual_seed(1))
    assert float(same.total.detach()) == pytest.approx(0.0, abs=1e-6)
    off = sfddm_loss(teacher, teacher, sched, x0, t=torch.tensor([1, 2, 3]), eps=torch.randn(3, 1, 8, 8),
                     generator=torch.Generator())
    assert float(off.output) > 1e-3


@pytest.mark.parametrize("hidden", ["l1", "kl"])
def test_a_few_steps_of_training_lower_the_distillation_loss(hidden):
    teacher, student = tiny(0), tiny(1)
    sched = NoiseSchedule(4, "squaredcos_cap_v2", stride=4)
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    probe = dict(t=torch.arange(16) % 4, eps=torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(5)))

    def loss_now():
        with torch.no_grad():
            return float(sfddm_loss(student, teacher, sched, x0, generator=torch.Generator(), hidden=hidden,
                                    **probe).total)

    before = loss_now()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        loss = sfddm_loss(student, teacher, sched, x0, generator=g, hidden=hidden).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.7 * before
    assert all(p.grad is None for p in teacher.parameters())


def test_unknown_hidden_loss_is_refused():
    with pytest.raises(ValueError, match="hidden must be one of"):
        sfddm_loss(tiny(0), tiny(0), NoiseSchedule(4, stride=4), torch.zeros(1, 1, 8, 8),
                   generator=torch.Generator(), hidden="l2")
