"""attacks/bn_prior.py: the batch statistics read out of a FedAvg reply's BatchNorm buffers are the
true batch's (one local step), the prior vanishes at the true images, and IG uses it under
threat bn-mode "buffers" (refused, in one line, where there is nothing to read)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import build_attack
from attacks.base import AttackError, Victim
from attacks.bn_prior import BNPrior, recovered_statistics
from attacks.exchange import client_exchange
from attacks.objectives import Functional
from attacks.threat_model import ThreatModel, expose
from attacks.victims import build_victim
from fedsim.models.train import ClassifierTask

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 16, 16)


def exchange(mode: str, local_steps: int = 1, n: int = 4):
    g = torch.Generator().manual_seed(0)
    model = build_victim("resnet-bn", SHAPE, 10, seed=1)
    images, labels = torch.rand(n, *SHAPE, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    obs, secrets = client_exchange(model, ClassifierTask(), images, labels, mode=mode, local_steps=local_steps,
                                   generator=g)
    return model, images, labels, obs, secrets


def true_statistics(model: nn.Module, sent: dict, images: torch.Tensor) -> dict:
    """Each BatchNorm layer's input mean and unbiased variance in the client's forward at w_0."""
    net = build_victim("resnet-bn", SHAPE, 10, seed=1)
    net.load_state_dict(sent)
    net.train()
    out, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: out.__setitem__(name, (args[0].mean((0, 2, 3)),
                                                                   args[0].var((0, 2, 3), unbiased=True)))))
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    return out


def test_one_step_reply_gives_the_batch_statistics_exactly():
    model, images, labels, obs, secrets = exchange("fedavg")
    inp = expose(obs, ThreatModel(bn_mode="buffers"), secrets)
    got = recovered_statistics(model, inp)
    want = true_statistics(model, obs.sent, images)
    assert sorted(got) == sorted(want) and len(got) >= 3
    for name, (mean, var) in want.items():
        assert torch.allclose(got[name][0], mean, rtol=1e-3, atol=1e-5), name
        assert torch.allclose(got[name][1], var, rtol=1e-3, atol=1e-5), name


def test_prior_vanishes_at_the_true_batch_and_not_elsewhere():
    model, images, labels, obs, secrets = exchange("fedavg")
    inp = expose(obs, ThreatModel(bn_mode="buffers"), secrets)
    fn = Functional(Victim(model, ClassifierTask(), SHAPE, 10), inp.sent, inp.bn_mode)
    prior = BNPrior(fn.model, recovered_statistics(fn.model, inp))
    fn.loss(images, labels)
    at_truth = float(prior.value().detach())
    prior.reset()
    fn.loss(torch.rand(images.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1, labels)
    elsewhere = float(prior.value().detach())
    prior.close()
    assert at_truth < 1e-3 * elsewhere and elsewhere > 0


def test_ig_uses_the_prior_only_under_buffers_and_refuses_what_it_cannot_read():
    model, images, labels, obs, secrets = exchange("fedavg")
    victim = Victim(model, ClassifierTask(), SHAPE, 10)
    ig = build_attack("ig", iterations=3)
    calls = []
    original = BNPrior.value
    BNPrior.value = lambda self: calls.append(1) or original(self)
    try:
        g = torch.Generator().manual_seed(0)
        ig.reconstruct(victim, expose(obs, ThreatModel(labels="known", bn_mode="batch"), secrets), generator=g)
        assert calls == []
        ig.reconstruct(victim, expose(obs, ThreatModel(labels="known", bn_mode="buffers"), secrets), generator=g)
        assert len(calls) >= 3  # every objective evaluation
    finally:
        BNPrior.value = original
    assert all(not m._forward_pre_hooks for m in model.modules())  # the hooks are gone
    _, _, _, fedsgd, sec = exchange("fedsgd")
    with pytest.raises(AttackError, match="FedSGD"):
        ig.reconstruct(victim, expose(fedsgd, ThreatModel(labels="known", bn_mode="buffers"), sec), generator=g)
    convnet = build_victim("convnet", SHAPE, 10, seed=0)
    plain, sec2 = client_exchange(convnet, ClassifierTask(), images, labels, mode="fedavg", local_steps=1,
                                  generator=torch.Generator().manual_seed(0))
    with pytest.raises(AttackError, match="BatchNorm"):
        ig.reconstruct(Victim(convnet, ClassifierTask(), SHAPE, 10),
                       expose(plain, ThreatModel(labels="known", bn_mode="buffers"), sec2), generator=g)
