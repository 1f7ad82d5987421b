"""Tests for fedsim/models/train.py: local training, FedSGD gradients, per-sample losses.

Plain PyTorch on CPU: 16 digits images and a tiny CNN, plus a zero-initialised
linear classifier whose cross-entropy gradient can be worked out by hand.
"""

import pytest
import torch
from torch import nn

from fedsim.data.datasets import load_dataset
from fedsim.models.diffusion import NoiseSchedule
from fedsim.models.networks import build_model
from fedsim.models.train import (
    ClassifierTask,
    DiffusionTask,
    accuracy,
    batch_gradient,
    make_task,
    per_sample_losses,
    train_local,
)

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope="module")
def digits16():
    d = load_dataset("digits")
    return d.images[:16], torch.from_numpy(d.labels[:16].copy())


def _train_cnn(x, y, seed: int, epochs: int = 20):
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    stats = train_local(model, ClassifierTask(), x, y, epochs=epochs, batch_size=8, lr=1e-3,
                        generator=torch.Generator().manual_seed(seed))
    return model, stats


def test_make_task():
    assert isinstance(make_task("cnn"), ClassifierTask)
    task = make_task("ddpm-small", 50, "scaled_linear")
    assert isinstance(task, DiffusionTask) and task.schedule == NoiseSchedule(50, "scaled_linear")


def test_train_local_reduces_classifier_loss(digits16):
    x, y = digits16
    probe = torch.Generator()
    before = per_sample_losses(build_model("cnn", (1, 8, 8), 10, seed=0), ClassifierTask(), x, y,
                               generator=probe).mean()
    model, stats = _train_cnn(x, y, seed=0)
    after = per_sample_losses(model, ClassifierTask(), x, y, generator=probe).mean()
    assert before > 2.0  # about ln(10) = 2.30 for an untrained 10-class head
    assert after < 0.5 * before
    assert (stats.steps, stats.num_examples) == (20 * 2, 16)  # 16 images / batch 8 = 2 steps per epoch
    assert 0 < stats.loss < before  # mean over all steps, below the starting loss
    assert accuracy(model, x, y) >= 0.75


def test_train_local_same_seed_same_weights(digits16):
    x, y = digits16
    a, sa = _train_cnn(x, y, seed=7, epochs=3)
    b, sb = _train_cnn(x, y, seed=7, epochs=3)
    c, _ = _train_cnn(x, y, seed=8, epochs=3)
    wa, wb, wc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and sa == sb
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the seed does shuffle the batches


def test_train_local_grad_clip_bounds_every_step(digits16):
    """Plain SGD at lr 1: each step moves the weights by exactly the clipped gradient, so
    with clip c the whole move over S steps is at most S * c (unclipped it is far larger)."""
    x, y = digits16

    def move(clip: float) -> tuple[float, int]:
        model = build_model("cnn", (1, 8, 8), 10, seed=0)
        w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        stats = train_local(model, ClassifierTask(), x, y, epochs=2, batch_size=8, lr=1.0, optimizer="sgd",
                            grad_clip=clip, generator=torch.Generator().manual_seed(0))
        w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((w1 - w0).norm()), stats.steps

    clipped, steps = move(1e-3)
    free, _ = move(0.0)
    assert steps == 4 and 0 < clipped <= steps * 1e-3 * 1.001
    assert free > 100 * clipped


def test_train_local_diffusion_same_seed_same_weights(digits16):
    x, y = digits16[0][:4], digits16[1][:4]
    task = make_task("ddpm-small", 100)
    weights = []
    for seed in (3, 3, 4):
        model = build_model("ddpm-small", (1, 8, 8), 10, seed=0)
        stats = train_local(model, task, x, y, epochs=1, batch_size=4, lr=1e-3,
                            generator=torch.Generator().manual_seed(seed))
        assert stats.steps == 1 and stats.loss > 0
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # other (t, eps)


def test_per_sample_losses_diffusion_shape_and_seeded(digits16):
    x, y = digits16[0][:6], digits16[1][:6]
    model = build_model("ddpm-small", (1, 8, 8), 10)
    task = make_task("ddpm-small", 100)
    a = per_sample_losses(model, task, x, y, generator=torch.Generator().manual_seed(1))
    b = per_sample_losses(model, task, x, y, generator=torch.Generator().manual_seed(1))
    c = per_sample_losses(model, task, x, y, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6,) and (a > 0).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # (t, eps) are drawn once for all N, so the batch size does not change the probe
    small = per_sample_losses(model, task, x, y, generator=torch.Generator().manual_seed(1), batch_size=4)
    torch.testing.assert_close(small, a, rtol=1e-4, atol=1e-6)


def test_per_sample_losses_classifier_is_cross_entropy():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0]))
    x, y = torch.zeros(3, 1, 1, 2), torch.tensor([0, 1, 1])
    losses = per_sample_losses(model, ClassifierTask(), x, y, generator=torch.Generator())
    assert losses.shape == (3,)
    torch.testing.assert_close(losses, torch.full((3,), 0.6931471805599453))  # ln 2: uniform over 2


def test_batch_gradient_by_hand():
    """Zero linear classifier: softmax p = 1/2, so dL/db = mean(p - y) and dL/dW = mean((p - y) x^T)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).view(4, 1, 1, 2)
    y = torch.tensor([0, 0, 0, 1])
    grads, stats = batch_gradient(model, ClassifierTask(), x, y, batch_size=4,
                                  generator=torch.Generator().manual_seed(0))
    # p - onehot: class 0 -> [-.5, -.5, -.5, .5]; class 1 -> the negative
    torch.testing.assert_close(grads["1.bias"], torch.tensor([-0.25, 0.25]))
    torch.testing.assert_close(grads["1.weight"], torch.tensor([[0.0, -0.25], [0.0, 0.25]]))
    assert (stats.steps, stats.num_examples) == (1, 4)
    assert stats.loss == pytest.approx(0.6931471805599453)


def test_batch_gradient_one_tensor_per_parameter(digits16):
    x, y = digits16
    model = build_model("cnn", (1, 8, 8), 10)
    grads, stats = batch_gradient(model, ClassifierTask(), x, y, batch_size=5,
                                  generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    assert set(grads) == set(params)
    assert all(grads[k].shape == params[k].shape for k in params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert stats.num_examples == 5 and stats.steps == 1
    # a copy, not the live .grad: zeroing the model's grads leaves the result alone
    model.zero_grad(set_to_none=False)
    assert any(g.abs().sum() > 0 for g in grads.values())
