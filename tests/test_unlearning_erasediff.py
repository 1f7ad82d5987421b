"""Tests for fedsim/unlearning/erasediff.py: EraseDiff's first-order bi-level solver.

The lambda rules against hand-computed gradients of a two-weight model; the rest on the
tiny diffusers UNet pre-trained on sklearn digits 0 (D_r) and 1 (D_f)
(tests/unlearning_setup.py): forgetting, the inner passes' effect, empty sets.
"""

import pytest
import torch

from unlearning_setup import SCHED, digits01, pretrained  # noqa: F401  (fixtures)
from unlearning_setup import gen as _gen
from unlearning_setup import tiny_unet as _model

from fedsim.models.diffusion import diffusion_loss, predict_eps
from fedsim.unlearning.common import UnlearnParams
from fedsim.unlearning.erasediff import bilevel_gradient, erasediff_train

pytestmark = pytest.mark.usefixtures('one_thread')


@torch.no_grad()
def _uniform_forget_loss(model, data) -> float:
    """f with the uniform target on a fixed probe: || u - eps_theta(add_noise(x, u, t), t, c) ||^2."""
    x, y = data
    gen = _gen(77)
    t = torch.randint(0, SCHED.timesteps, (x.shape[0],), generator=gen)
    u = torch.rand(x.shape, generator=gen)
    return float((predict_eps(model, SCHED.add_noise(x, u, t), t, y) - u).pow(2).mean())


@torch.no_grad()
def _retain_loss(model, data) -> float:
    return float(diffusion_loss(model, SCHED, *data, generator=_gen(78)))


def test_erasediff_uniform_target_forgets_and_keeps_utility(digits01, pretrained):
    retain, forget = digits01
    r, f = (retain[0][:64], retain[1][:64]), (forget[0][:64], forget[1][:64])
    model = _model(pretrained)
    f0, r0 = _uniform_forget_loss(model, f), _retain_loss(model, r)
    # lambda = 1 (default 0.1) so that 2 epochs of 4 outer steps show the effect
    stats = erasediff_train(model, SCHED, r, f, epochs=2, batch_size=16, lr=2e-3, num_classes=10,
                            params=UnlearnParams(erasediff_lambda=1.0), generator=_gen(2))
    assert stats.steps == 8 and stats.num_examples == 64  # the kept data
    f1, r1 = _uniform_forget_loss(model, f), _retain_loss(model, r)
    assert f1 < 0.8 * f0
    assert r1 < 1.5 * r0


@pytest.mark.parametrize("rule, target",
                         [("cosine", "uniform"), ("bome", "uniform"), ("bome", "random-label")])
def test_erasediff_adaptive_rules_run(digits01, pretrained, rule, target):
    retain, forget = digits01
    r, f = (retain[0][:32], retain[1][:32]), (forget[0][:32], forget[1][:32])
    model = _model(pretrained)
    params = UnlearnParams(erasediff_rule=rule, erasediff_target=target, erasediff_inner_passes=1)
    stats = erasediff_train(model, SCHED, r, f, epochs=1, batch_size=16, lr=1e-3, num_classes=10,
                            params=params, generator=_gen(2))
    assert stats.steps == 2 and torch.isfinite(torch.tensor(stats.loss))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, pretrained[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("rule, b, lam", [
    ("fixed", [-1.0, 0.0], 0.25),  # erasediff_lambda, whatever the gradients
    ("cosine", [-1.0, 0.0], 0.7),  # cos(g_r, g_q) = -3/5: max(0.1 + 0.6, 0)
    ("cosine", [1.0, 0.0], 0.0),  # cos = 3/5: 0.1 - 0.6 < 0, clipped at 0
    ("bome", [-2.0, 0.0], 1.6),  # (0.1 * 4 - (-6), 0) / 4
    ("bome", [-1.0, 0.0], 3.1),  # (0.1 * 1 + 3) / 1: differs from the cosine rule's 0.7
    ("bome", [2.0, 0.0], 0.0),  # 0.1 * 4 - 6 < 0, clipped at 0
])
def test_erasediff_lambda_rules_by_hand(rule, b, lam):
    """On a two-weight model with L_r = ||w - a||^2 / 2 and q = <w, b>, so that by hand
    grad L_r = w - a = [3, 4] and grad q = b: lambda and the step's gradient g_r + lambda g_q."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a, b = torch.tensor([-2.0, -2.0]), torch.tensor(b)
    params = UnlearnParams(erasediff_rule=rule, erasediff_lambda=0.25, erasediff_eta=0.1)
    got = bilevel_gradient(0.5 * (w - a).pow(2).sum(), torch.dot(w, b), [w], params)
    assert got == pytest.approx(lam, abs=1e-6)
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0]) + lam * b, atol=1e-6)


def test_erasediff_inner_passes_shape_the_outer_steps(digits01, pretrained):
    """The inner passes restore theta but not the shared Adam state, so K changes the
    result (with a fresh optimiser for them, K = 0 and K = 2 end bit for bit equal: the
    outer steps draw the same t, eps and batches whatever K is). Measured: mean |delta w|
    of K = 1, 2, 4 against K = 0 is 0.7-0.9 lr after 4 outer steps."""
    retain, forget = digits01
    r, f = (retain[0][:64], retain[1][:64]), (forget[0][:64], forget[1][:64])

    def weights(passes):
        model = _model(pretrained)
        stats = erasediff_train(model, SCHED, r, f, epochs=1, batch_size=16, lr=1e-3, num_classes=10,
                                params=UnlearnParams(erasediff_lambda=1.0, erasediff_inner_passes=passes),
                                generator=_gen(2))
        assert stats.steps == 4  # outer steps only
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    w0, w2 = weights(0), weights(2)
    assert float((w2 - w0).abs().mean()) > 0.3 * 1e-3


def test_erasediff_empty_retain_and_random_label_needs_classes(digits01):
    _, forget = digits01
    f = (forget[0][:16], forget[1][:16])
    empty = (f[0][:0], f[1][:0])
    stats = erasediff_train(_model(conditional=False), SCHED, empty, f, epochs=1, batch_size=8, lr=1e-3,
                            num_classes=10, params=UnlearnParams(), generator=_gen(0))
    assert stats.steps == 2
    with pytest.raises(ValueError, match="conditional"):
        erasediff_train(_model(conditional=False), SCHED, f, f, epochs=1, batch_size=8, lr=1e-3,
                        num_classes=10, params=UnlearnParams(erasediff_target="random-label"),
                        generator=_gen(0))
