"""Gradient-inversion attacks (attacks/): hand-checkable pieces and small end-to-end runs.

- objectives: layer weights, cosine / L2 distances, the observed gradient g* (FedSGD, FedAvg);
- attacks/exchange.py: the client's round against autograd and a hand-written SGD loop;
- label recovery (iDLG bias sign, count strategy with repeated labels);
- DLG, iDLG, IG, simulation, AGIC, GIDM and GIDM+ on tiny models, with iteration counts
  cut to the minimum that keeps a clear margin over the thresholds (measured values are
  quoted next to each threshold, single-threaded CPU).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attacks.agic import AGIC
from attacks.base import AttackError, Clock, Victim, random_images
from attacks.dlg import DLG
from attacks.exchange import client_exchange, plan
from attacks.gidm import GIDM
from attacks.gidm_plus import GIDMPlus
from attacks.idlg import IDLG
from attacks.ig import IG
from attacks.labels import recover_labels
from attacks.metrics import label_accuracy, score
from attacks.objectives import (Functional, cosine_distance, l2_distance, layer_weights, local_steps,
                                observed_gradient)
from attacks.optimize import adam, lbfgs
from attacks.simulation import Simulation
from attacks.threat_model import AttackInput, LocalHparams, ThreatModel, expose
from attacks.victims import build_victim
from fedsim.data.datasets import load_dataset
from fedsim.models.diffusion import NoiseSchedule
from fedsim.models.train import ClassifierTask, DiffusionTask

pytestmark = pytest.mark.usefixtures("one_thread")

DIGIT = (1, 8, 8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def photos():
    return load_dataset("photos", "test")


def batch(data, idx) -> tuple[torch.Tensor, torch.Tensor]:
    idx = list(idx)
    return data.images[idx], torch.as_tensor(data.labels[idx].copy())


def first_of_each_class(data, classes) -> list[int]:
    return [int(np.flatnonzero(data.labels == c)[0]) for c in classes]


def classifier(name: str, shape=DIGIT, classes: int = 10, init: str = "default") -> Victim:
    return Victim(build_victim(name, shape, classes, init=init), ClassifierTask(), shape, classes)


def diffusion_victim() -> Victim:
    return Victim(build_victim("ddpm-tiny", DIGIT, 10), DiffusionTask(NoiseSchedule(16, "squaredcos_cap_v2")),
                  DIGIT, 10)


def exchange(v: Victim, x, y, threat: ThreatModel = ThreatModel(), seed: int = 0, **kw) -> AttackInput:
    obs, secrets = client_exchange(v.model, v.task, x, y, generator=gen(seed), **kw)
    return expose(obs, threat, secrets)


# --- objectives ---------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "log", "quadratic", "geometric"])
def test_layer_weights_on_the_convnet_increase_with_depth_and_pair_weight_and_bias(schedule):
    # the ConvNet: body.0, body.2, body.4 (convs), head (the output layer): 4 modules, u = 0, 1/3, 2/3, 1
    names = [n for n, _ in build_victim("convnet", (3, 32, 32), 10).named_parameters()]
    assert len(names) == 8
    s = 20.0
    w = layer_weights(names, schedule, scale=s)
    per_module = [w[i:i + 2] for i in range(0, 8, 2)]
    assert all(a == b for a, b in per_module)  # a layer's weight and bias share one weight
    firsts = [m[0] for m in per_module]
    assert all(a < b for a, b in zip(firsts, firsts[1:]))  # strictly increasing towards the output
    assert firsts[0] == pytest.approx(1.0) and firsts[-1] == pytest.approx(s)  # the output layer gets s
    u = 1 / 3
    expected = {"linear": 1 + (s - 1) * u, "log": 1 + (s - 1) * math.log(1 + (math.e - 1) * u),
                "quadratic": 1 + (s - 1) * u * u, "geometric": s ** u}[schedule]
    assert firsts[1] == pytest.approx(expected)


def test_layer_weights_by_module_not_by_tensor_count():
    # a module with three tensors (e.g. a norm layer's weight, bias and a third) stays one module
    names = ["a.weight", "a.bias", "b.weight", "b.bias", "b.extra", "c.weight"]
    assert layer_weights(names, "linear", scale=5.0) == pytest.approx([1, 1, 3, 3, 3, 5])
    assert layer_weights(names, "none") == [1.0] * 6
    assert layer_weights(["fc.weight", "fc.bias"], "linear") == [1.0, 1.0]  # one layer: nothing to grade
    with pytest.raises(AttackError, match="unknown layer-weight schedule 'cubic'.*linear"):
        layer_weights(names, "cubic")


def test_layer_weights_preserve_divides_by_nonzero_fraction():
    target = [torch.tensor([1.0, 0.0, 0.0, 2.0]), torch.ones(3), torch.ones(2), torch.ones(2)]
    w = layer_weights(["a.w", "b.w", "c.w", "d.w"], "none", target=target, preserve=True)
    assert w == pytest.approx([2.0, 1.0, 1.0, 1.0])


def test_cosine_and_l2_distance_by_hand():
    g = [torch.randn(3, 4, generator=gen(0)), torch.randn(5, generator=gen(1))]
    assert float(cosine_distance(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(g, [-t for t in g])) == pytest.approx(2.0, abs=1e-6)
    other = [torch.randn(3, 4, generator=gen(2)), torch.randn(5, generator=gen(3))]
    assert float(cosine_distance(g, other, [3.0, 3.0])) == pytest.approx(float(cosine_distance(g, other)), abs=1e-6)
    # two one-element tensors: unweighted dot 1 - 1 = 0 -> 1; weights (3, 1): 1 - (3 - 1) / (2 * 2) = 0.5
    a, b = [torch.tensor([1.0]), torch.tensor([1.0])], [torch.tensor([1.0]), torch.tensor([-1.0])]
    assert float(cosine_distance(a, b)) == pytest.approx(1.0)
    assert float(cosine_distance(a, b, [3.0, 1.0])) == pytest.approx(0.5)
    assert float(l2_distance(a, b)) == pytest.approx(4.0)  # (1 - (-1))^2


def test_observed_gradient_fedsgd_fedavg_and_unknown_hparams(digits):
    v = classifier("convnet")
    x, y = batch(digits, range(4))
    names = [n for n, _ in v.model.named_parameters()]

    sgd = exchange(v, x, y)
    assert sgd.payload == "gradient"
    for n, g in zip(names, observed_gradient(sgd, names)):
        assert torch.equal(g, sgd.update[n])

    avg = exchange(v, x, y, mode="fedavg", lr=0.05, local_steps=8)
    assert avg.payload == "weights" and avg.hparams == LocalHparams(0.05, 2, 1, 8)  # plan(4, 8) = 2 x 4 x 1
    assert local_steps(avg) == 8
    for n, g in zip(names, observed_gradient(avg, names)):
        assert torch.allclose(g, -avg.update[n] / (0.05 * 8))
    # without the reply's step count: epochs * ceil(N / b) = 2 * 4
    assert local_steps(dataclasses.replace(avg, hparams=LocalHparams(0.05, 2, 1))) == 8

    blind = exchange(v, x, y, ThreatModel(local_hparams=False), mode="fedavg", lr=0.05, local_steps=8)
    assert blind.hparams is None
    with pytest.raises(AttackError, match="local_hparams"):
        observed_gradient(blind, names, need_scale=True)
    for n, g in zip(names, observed_gradient(blind, names, need_scale=False)):  # the direction only
        assert torch.equal(g, -blind.update[n])


def test_adam_signed_steps_decay_box_and_best():
    # signed Adam moves every coordinate by exactly lr per step (m / sqrt(v) of a constant sign is 1);
    # decay x0.1 at iterations 3, 5, 7 of 8: 0.1 * 3 + 0.01 * 2 + 0.001 * 2 + 0.0001; the best
    # objective is read before each step, so the returned iterate is the one before the last step
    x = torch.zeros(3, requires_grad=True)
    (best_x,), best = adam(lambda: (x - 5).pow(4).sum(), [x], iterations=8, lr=0.1, signed=True)
    assert best_x.tolist() == pytest.approx([0.322] * 3, abs=1e-6)
    assert x.detach().tolist() == pytest.approx([0.3221] * 3, abs=1e-6)
    assert best == pytest.approx(3 * (5 - 0.322) ** 4, rel=1e-5)
    x = torch.zeros(3, requires_grad=True)  # plain Adam on a shrinking gradient moves less
    (plain,), _ = adam(lambda: (x - 5).pow(4).sum(), [x], iterations=8, lr=0.1, signed=False)
    assert float(plain[0]) < 0.3215
    x = torch.zeros(1, requires_grad=True)  # overshoots 0.22: the best iterate (0.2) is kept, not the last
    (best_x,), best = adam(lambda: (x - 0.22).pow(2).sum(), [x], iterations=6, lr=0.1, decay=False)
    assert float(best_x) == pytest.approx(0.2, abs=1e-6) and best == pytest.approx(0.02 ** 2, abs=1e-8)
    assert float(x.detach()) > 0.3
    x = torch.full((2,), 0.95, requires_grad=True)  # projected onto the box after every step
    (best_x,), best = adam(lambda: (x - 5).pow(2).sum(), [x], iterations=3, lr=0.1, boxes=[(-1.0, 1.0)])
    assert best_x.tolist() == [1.0, 1.0] and best == pytest.approx(32.0)
    y = torch.zeros(2, requires_grad=True)
    (best_y,), best = lbfgs(lambda: (y - torch.tensor([3.0, -2.0])).pow(2).sum(), [y], iterations=5)
    assert best_y.tolist() == pytest.approx([3.0, -2.0], abs=1e-5) and best < 1e-10


# --- the client's round ---------------------------------------------------------------------------

def test_client_exchange_fedsgd_is_the_mean_loss_gradient(digits):
    v = classifier("convnet")
    x, y = batch(digits, range(3))
    before = {k: t.clone() for k, t in v.model.state_dict().items()}
    obs, secrets = client_exchange(v.model, v.task, x, y, generator=gen(0))
    v.model.zero_grad()
    F.cross_entropy(v.model(x), y).backward()
    assert obs.payload == "gradient" and obs.num_examples == 3 and torch.equal(secrets.labels, y)
    for n, p in v.model.named_parameters():
        assert torch.allclose(obs.received[n], p.grad, atol=1e-6), n
        assert torch.equal(obs.sent[n], before[n]) and torch.equal(p.detach(), before[n])  # model untouched


def test_client_exchange_fedavg_matches_hand_sgd(digits):
    v = classifier("convnet")
    x, y = batch(digits, range(4))
    lr = 0.05
    # one step: w_1 = w_0 - lr * grad L(w_0; all images)
    obs, _ = client_exchange(v.model, v.task, x, y, mode="fedavg", lr=lr, local_steps=1, generator=gen(0))
    v.model.zero_grad()
    F.cross_entropy(v.model(x), y).backward()
    for n, p in v.model.named_parameters():
        assert torch.allclose(obs.received[n], obs.sent[n] - lr * p.grad, atol=1e-6), n
    # eight steps on four images: plan = 2 epochs x 4 steps of one image, step k takes image k
    assert plan(4, 8) == (2, 4, 1) and plan(8, 8) == (2, 4, 2) and plan(3, 8) == (8, 1, 3)
    obs, _ = client_exchange(v.model, v.task, x, y, mode="fedavg", lr=lr, local_steps=8, generator=gen(0))
    assert obs.metrics["steps"] == 8 and obs.config["local-epochs"] == 2 and obs.config["batch-size"] == 1
    w = {n: p.detach().clone().requires_grad_(True) for n, p in v.model.named_parameters()}
    fn = Functional(v, obs.sent)
    for _ in range(2):
        for k in range(4):
            loss = fn.loss(x[k:k + 1], y[k:k + 1], params=w)
            w = {n: (p - lr * g).detach().requires_grad_(True)
                 for (n, p), g in zip(w.items(), torch.autograd.grad(loss, list(w.values())))}
    for n in w:
        assert torch.allclose(obs.received[n], w[n], atol=1e-5), n


def test_client_exchange_diffusion_noise_and_timesteps(digits):
    v = diffusion_victim()
    x, y = batch(digits, range(3))
    obs, secrets = client_exchange(v.model, v.task, x, y, generator=gen(0))
    assert secrets.eps.shape == (3, 1, 8, 8) and secrets.t.shape == (3,)
    assert secrets.t.dtype == torch.long and len(set(secrets.t.tolist())) == 1  # t_mode "shared"
    assert 0 <= int(secrets.t[0]) < 16
    # the server's gradient is that of the DDPM loss with exactly these (eps, t)
    fn = Functional(v, obs.sent)
    g = fn.grads(fn.loss(x, None, eps=secrets.eps, t=secrets.t), create_graph=False)
    assert float(l2_distance(g, observed_gradient(expose(obs, ThreatModel()), fn.names))) < 1e-8

    _, per = client_exchange(v.model, v.task, x, y, t_mode="per-sample", generator=gen(3))
    assert per.t.shape == (3,) and per.eps.shape == (3, 1, 8, 8)
    obs, avg = client_exchange(v.model, v.task, x[:2], y[:2], mode="fedavg", local_steps=4, generator=gen(0))
    # plan(2, 4) = 2 epochs x 2 steps of one image: the noise per epoch, one t per step
    assert avg.eps.shape == (2, 2, 1, 8, 8) and avg.t.shape == (2, 2) and obs.payload == "weights"


# --- labels ----------------------------------------------------------------------------------------

def test_idlg_recovers_every_single_label(digits):
    v = classifier("lenet", init="uniform")
    for i in first_of_each_class(digits, range(10)):
        x, y = batch(digits, [i])
        inp = exchange(v, x, y, ThreatModel(labels="unknown"))
        assert inp.labels is None
        r = IDLG(iterations=1, inner=1).reconstruct(v, inp, generator=gen(1))  # labels come before any step
        assert r.labels.tolist() == y.tolist()


def test_recover_labels_convnet_single_and_batches(digits):
    v = classifier("convnet")
    for i in first_of_each_class(digits, range(10)):
        x, y = batch(digits, [i])
        inp = exchange(v, x, y)
        fn = Functional(v, inp.sent)
        assert recover_labels(fn, observed_gradient(inp, fn.names), 1).tolist() == y.tolist()

    # repeated labels (3,3,3,7,7,0,0,5) on an untrained model: "count" finds the multiset exactly.
    # Measured continuous counts B (pbar - g_b) = 1.99, 3.01, 1.00, 2.01 and |.| < 0.03 elsewhere.
    idx = [int(j) for c, k in ((3, 3), (7, 2), (0, 2), (5, 1)) for j in np.flatnonzero(digits.labels == c)[:k]]
    x, y = batch(digits, idx)
    inp = exchange(v, x, y)
    fn = Functional(v, inp.sent)
    target = observed_gradient(inp, fn.names)
    got = recover_labels(fn, target, 8, "count", generator=gen(0))
    assert got.tolist() == sorted(y.tolist())
    assert label_accuracy(got, y) == 1.0
    # the B most negative bias entries would miss the repeats: 4 distinct labels of 8 at best
    assert label_accuracy(recover_labels(fn, target, 8, "bias-sign"), y) <= 0.5

    # distinct labels: bias-sign is exact (20/20 random draws measured on this model)
    x, y = batch(digits, first_of_each_class(digits, [8, 1, 6, 2]))
    inp = exchange(v, x, y)
    fn4 = Functional(v, inp.sent)
    assert recover_labels(fn4, observed_gradient(inp, fn4.names), 4, "bias-sign").tolist() == [1, 2, 6, 8]
    with pytest.raises(AttackError, match="unknown label strategy"):
        recover_labels(fn, target, 8, "oracle")
    with pytest.raises(AttackError, match="batch 11 > 10"):
        recover_labels(fn, target, 11, "bias-sign")


# --- attacks on classifiers ------------------------------------------------------------------------

def test_dlg_recovers_image_and_label_on_sigmoid_lenet(digits):
    # measured: 89.5 dB and 105.4 dB with 10 L-BFGS steps (converges in < 5)
    v = classifier("lenet", init="uniform")
    for i in (0, 1):
        x, y = batch(digits, [i])
        inp = exchange(v, x, y, ThreatModel(labels="unknown"))
        r = DLG(iterations=10).reconstruct(v, inp, generator=gen(1))
        assert r.images.shape == x.shape
        assert r.labels.tolist() == y.tolist()  # argmax of the optimised label logits
        assert score(r.images, x)["psnr"] > 40


def test_ig_recovers_a_32px_photo(photos):
    # measured 24.2 dB (seeds 1-4: 23.7-25.9 dB) with 200 iterations; 300 give 25.3 dB
    shape = (3, 32, 32)
    v = classifier("convnet", shape, 8)
    x, y = batch(photos, [0])
    inp = exchange(v, x, y, ThreatModel(labels="recovered"))
    r = IG(iterations=200).reconstruct(v, inp, generator=gen(1))
    assert r.labels.tolist() == y.tolist()
    baseline = score(random_images(1, shape, (-1, 1), gen(1)), x)["psnr"]  # the attack's own init: 7.5 dB
    psnr = score(r.images, x)["psnr"]
    assert psnr >= 20 and psnr > baseline + 10
    assert r.history[0][1] > r.extras["objective"]


@pytest.fixture(scope="module")
def fedavg_digits(digits):
    """Four digits, eight local SGD steps (2 epochs x 4 steps of one image), labels known."""
    v = classifier("convnet")
    x, y = batch(digits, range(4))
    inp = exchange(v, x, y, ThreatModel(labels="known"), mode="fedavg", lr=0.05, local_steps=8)
    return v, x, y, inp


def test_simulation_distance_vanishes_at_the_truth(fedavg_digits):
    v, x, y, inp = fedavg_digits
    _, _, distance = Simulation().setup(v, [inp])
    assert float(distance(x, y).detach()) < 1e-5  # the unrolled SGD reproduces the client's update
    assert float(distance(random_images(4, DIGIT, (-1, 1), gen(0)), y).detach()) > 0.1
    # a FedSGD gradient is one step whose simulated update is -lr g: the attack is IG
    sgd = exchange(v, x, y, ThreatModel(labels="known"))
    xr = random_images(4, DIGIT, (-1, 1), gen(0))
    assert float(Simulation().setup(v, [sgd])[2](xr, y).detach()) == pytest.approx(
        float(IG().setup(v, [sgd])[2](xr, y).detach()))
    with pytest.raises(AttackError, match="local_hparams"):
        Simulation().setup(v, [dataclasses.replace(inp, hparams=None)])


@pytest.fixture(scope="module")
def fedavg_repeated_labels(digits):
    """Labels 3, 3, 7, 0 on an untrained ConvNet, FedAvg 2 epochs x 4 steps, labels to recover."""
    v = classifier("convnet")
    idx = [int(j) for c, k in ((3, 2), (7, 1), (0, 1)) for j in np.flatnonzero(digits.labels == c)[:k]]
    x, y = batch(digits, idx)
    return v, exchange(v, x, y, mode="fedavg", lr=0.05, local_steps=8)


@pytest.mark.parametrize("attack", [IG, AGIC])
def test_fedavg_label_recovery_with_repeats(fedavg_repeated_labels, attack):
    v, inp = fedavg_repeated_labels  # "count" on g~ = -Delta w / (lr E K)
    assert attack(iterations=1).reconstruct(v, inp, generator=gen(1)).labels.tolist() == [0, 3, 3, 7]


def test_simulation_recovers_repeated_labels_like_ig(fedavg_repeated_labels):
    v, inp = fedavg_repeated_labels  # reads labels from -Delta w / (lr E K), like IG and AGIC
    assert Simulation(iterations=1).reconstruct(v, inp, generator=gen(1)).labels.tolist() == [0, 3, 3, 7]


def test_simulation_reconstructs_fedavg_batch(fedavg_digits):
    # tv 0: the default 0.2 dominates the cosine on 8x8 digits (300 iterations stay at 10.5 dB);
    # measured 30.0 dB with 100 iterations (60: 16.2 dB) against a 5.6 dB init
    v, x, y, inp = fedavg_digits
    r = Simulation(iterations=100, tv=0.0).reconstruct(v, inp, generator=gen(1))
    assert r.images.shape == x.shape and torch.isfinite(r.images).all()
    baseline = score(random_images(4, DIGIT, (-1, 1), gen(1)), x)["psnr"]
    assert score(r.images, x)["psnr"] > baseline + 10


def test_agic_reconstructs_fedavg_batch(fedavg_digits, digits):
    # labels recovered (count); measured 17.3 dB (seed 2: 18.1 dB) with 100 iterations, init ~5.5 dB.
    # TV 1e-4 (the paper group's value): the default 0.2 swamps the matching term on 8x8 digits
    v, x, y, known = fedavg_digits
    inp = dataclasses.replace(known, labels=None)
    _, _, distance = AGIC().setup(v, [inp])
    at_truth = float(distance(x, y).detach())  # approximate gradient: small, not zero (0.04)
    assert at_truth < 0.5 * float(distance(random_images(4, DIGIT, (-1, 1), gen(0)), y).detach())  # 0.34
    r = AGIC(iterations=100, tv=1e-4).reconstruct(v, inp, generator=gen(1))
    assert r.images.shape == x.shape and torch.isfinite(r.images).all()
    assert label_accuracy(r.labels, y) == 1.0
    baseline = max(score(random_images(4, DIGIT, (-1, 1), gen(s)), x)["psnr"] for s in range(5))  # 5.7 dB
    assert score(r.images, x)["psnr"] > baseline + 6
    with pytest.raises(AttackError, match="fusion_points"):
        AGIC(fusion_points="everywhere").setup(v, [inp])


def test_same_seed_same_reconstruction(digits):
    v = classifier("convnet")
    x, y = batch(digits, [0, 1])
    inp = exchange(v, x, y)  # labels recovered with "count": the generator is used there too

    def run(seed: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)  # the global RNG must play no part
        return IG(iterations=10).reconstruct(v, inp, generator=gen(seed)).images

    a = run(1, 100)
    assert torch.equal(a, run(1, 200))
    assert not torch.equal(a, run(2, 100))


def test_the_iterations_run_are_counted_not_the_last_logged(digits):
    """The clock logs every 10th iteration; the results' iterations column is what ran (25, not 21)."""
    v = classifier("convnet")
    x, y = batch(digits, [0, 1])
    rec = IG(iterations=25).reconstruct(v, exchange(v, x, y), generator=gen(1))
    assert rec.iterations == 25 and rec.history[-1][0] == 20
    clock = Clock(every=10)
    clock.log(0, 1.0)
    clock.advance_to(37)
    assert clock.iterations == 37 and len(clock.history) == 1


def test_registry_builds_by_name():
    from attacks import ATTACKS, build_attack
    assert set(ATTACKS) >= {"dlg", "idlg", "ig", "simulation", "agic", "gidm", "gidm_plus"}
    a = build_attack("agic", iterations=7, schedule="log")
    assert isinstance(a, AGIC) and a.cfg.iterations == 7 and a.cfg.schedule == "log"
    with pytest.raises(AttackError, match="unknown attack 'dgl'"):
        build_attack("dgl")


def test_unknown_option_is_an_attack_error():
    with pytest.raises(AttackError, match=r"unknown attack option 'nonsense'; known: .*iterations.*tv"):
        IG(nonsense=1)
    with pytest.raises(AttackError, match="unknown attack option"):
        GIDMPlus(probe_iteration=3)
    assert IG(**{"label-strategy": "count"}).cfg.label_strategy == "count"  # kebab-case accepted


def test_classifier_attacks_refuse_diffusion_and_vice_versa(digits):
    v = diffusion_victim()
    x, y = batch(digits, [0])
    inp = exchange(v, x, y)
    for attack in (DLG(), IG(), AGIC()):
        with pytest.raises(AttackError, match="diffusion"):
            attack.reconstruct(v, inp, generator=gen(0))
    c = classifier("convnet")
    with pytest.raises(AttackError, match="diffusion models"):
        GIDM(phases="pixel").reconstruct(c, exchange(c, x, y), generator=gen(0))


# --- attacks on diffusion models -------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusion_fedsgd(digits):
    v = diffusion_victim()
    x, y = batch(digits, [0])
    obs, secrets = client_exchange(v.model, v.task, x, y, generator=gen(0))
    return v, x, obs, secrets


def test_gidm_pixel_with_known_noise(diffusion_fedsgd):
    # measured objective 22.3 -> 14.6 over 30 iterations
    v, x, obs, secrets = diffusion_fedsgd
    inp = expose(obs, ThreatModel(eps_known=True, t_known=True), secrets)
    r = GIDM(phases="pixel", pixel_iterations=12, log_every=1).reconstruct(v, inp, generator=gen(1))
    assert r.images.shape == x.shape and torch.isfinite(r.images).all()
    assert len(r.history) == 12 and r.history[-1][1] < 0.9 * r.history[0][1]

    with pytest.raises(AttackError, match="eps_known and t_known"):
        GIDM(phases="pixel").reconstruct(v, expose(obs, ThreatModel(eps_known=True), secrets), generator=gen(1))
    with pytest.raises(AttackError, match="prior"):
        GIDM(phases="latent").reconstruct(v, inp, generator=gen(1))
    with pytest.raises(AttackError, match="unknown phases"):
        GIDM(phases="pixels").reconstruct(v, inp, generator=gen(1))


def test_gidm_plus_searches_t_and_updates_eps(diffusion_fedsgd):
    # 16 candidate t halved to one over 16 + 8 + 4 + 2 + 1 probes of 2 iterations, then 10 pixel steps
    v, x, obs, secrets = diffusion_fedsgd
    inp = expose(obs, ThreatModel(), secrets)
    assert inp.eps is None and inp.t is None
    r = GIDMPlus(phases="pixel", t_mode="enumerate", probe_iterations=2,
                 pixel_iterations=10).reconstruct(v, inp, generator=gen(1))
    trace = r.extras["t_trace"]
    assert trace[0] == list(range(16)) and len(trace[-1]) == 1
    assert [len(c) for c in trace] == [16, 8, 4, 2, 1]
    assert all(set(b) <= set(a) for a, b in zip(trace, trace[1:]))
    assert r.extras["t"].tolist() == trace[-1]
    eps, eps0 = r.extras["eps"], r.extras["eps_init"]
    assert eps.shape == eps0.shape == (1, 1, 8, 8) and not torch.allclose(eps, eps0)
    assert r.images.shape == x.shape and torch.isfinite(r.images).all()
    assert r.history[-1][1] < r.history[0][1]
    # eps is a free variable in both stages: the probes alone (no main phase) and the main phase
    # alone (one candidate t, no probe steps) each move it away from its init
    probes = GIDMPlus(phases="pixel", t_mode="enumerate", t_candidates=2, probe_iterations=3, pixel_iterations=0)
    r = probes.reconstruct(v, inp, generator=gen(1))
    assert r.extras["t_trace"] == [[0, 15], [0]] or r.extras["t_trace"] == [[0, 15], [15]]
    assert not torch.allclose(r.extras["eps"], r.extras["eps_init"])
    main = GIDMPlus(phases="pixel", t_mode="enumerate", t_candidates=1, probe_iterations=0, pixel_iterations=3)
    r = main.reconstruct(v, inp, generator=gen(1))
    assert r.extras["t_trace"] == [[0]] and not torch.allclose(r.extras["eps"], r.extras["eps_init"])
    with pytest.raises(AttackError, match="t_mode"):
        GIDMPlus(phases="pixel", t_mode="relaxed").reconstruct(v, inp, generator=gen(1))


def test_gidm_plus_uses_what_the_threat_model_grants(diffusion_fedsgd):
    v, x, obs, secrets = diffusion_fedsgd
    attack = GIDMPlus(phases="pixel", t_mode="enumerate", probe_iterations=2, pixel_iterations=4)
    # t granted: taken as it is, no search (no probe iterations, no trace); eps still free
    only_t = expose(obs, ThreatModel(t_known=True), secrets)
    assert only_t.t is not None and only_t.eps is None
    r = attack.reconstruct(v, only_t, generator=gen(1))
    assert torch.equal(r.extras["t"], secrets.t.long()) and r.extras["t_trace"] == []
    assert r.history[0][0] == 0 and not torch.allclose(r.extras["eps"], r.extras["eps_init"])
    # eps granted: fixed at the client's noise (not optimised, not penalised); t still searched
    only_eps = expose(obs, ThreatModel(eps_known=True), secrets)
    r = attack.reconstruct(v, only_eps, generator=gen(1))
    assert torch.equal(r.extras["eps"], secrets.eps.float()) and len(r.extras["t_trace"]) == 5
    # both granted: GIDM's problem; GIDM+ keeps the client's eps and t throughout
    both = expose(obs, ThreatModel(eps_known=True, t_known=True), secrets)
    plus = attack.reconstruct(v, both, generator=gen(1))
    assert torch.isfinite(plus.images).all() and plus.extras["t_trace"] == []
    assert torch.equal(plus.extras["t"], secrets.t.long()) and torch.equal(plus.extras["eps"], secrets.eps.float())


@pytest.mark.parametrize("timesteps", [16, 1000])
def test_gidm_plus_reads_every_timestep_off_the_time_embedding_gradient(digits, timesteps):
    # batch 1, FedSGD: dL/dW1 of time_embedding.linear_1 is rank one along time_proj(t); every t of
    # the schedule (16, or 40 of 1000) is read exactly, with no probe iterations
    v = Victim(build_victim("ddpm-tiny", DIGIT, 10, seed=3),
               DiffusionTask(NoiseSchedule(timesteps, "squaredcos_cap_v2")), DIGIT, 10)
    x, y = batch(digits, [5])
    ts = range(16) if timesteps == 16 else range(0, 1000, 25)
    read = []
    for t in ts:
        eps = torch.randn(x.shape, generator=gen(t))
        v.model.zero_grad()
        v.task.loss(v.model, x, y, generator=None, eps=eps, t=torch.tensor([t])).mean().backward()
        inp = AttackInput(sent={k: w.detach().clone() for k, w in v.model.state_dict().items()},
                          update={n: p.grad.detach().clone() for n, p in v.model.named_parameters()},
                          payload="gradient", num_samples=1, hparams=None, labels=None, eps=None, t=None)
        r = GIDMPlus(phases="pixel", pixel_iterations=0, eps_solve_every=0).reconstruct(v, inp, generator=gen(1))
        read.append(int(r.extras["t"][0]))
    assert read == list(ts)


def test_gidm_plus_reads_per_sample_timesteps(digits):
    # batch 3 with three distinct t per sample: the row space holds three time_proj vectors; the
    # read set is theirs (assigned in ascending order: the dummies are exchangeable)
    v = diffusion_victim()
    x, y = batch(digits, [0, 1, 2])
    obs, secrets = client_exchange(v.model, v.task, x, y, t_mode="per-sample", generator=gen(4))
    truth = sorted(secrets.t.tolist())
    assert len(set(truth)) == 3
    r = GIDMPlus(phases="pixel", pixel_iterations=0, eps_solve_every=0).reconstruct(
        v, expose(obs, ThreatModel(), secrets), generator=gen(1))
    assert r.extras["t"].tolist() == truth and r.extras["t_trace"] == []


def test_gidm_plus_input_coordinates_hold_the_network_input_fixed_in_e(diffusion_fedsgd):
    # coordinates = "input": phase 2's variable u is x_t itself; the image x = (u - b e) / a puts back
    # exactly u as the network's input whatever e is, so e moves only the loss's target
    schedule = NoiseSchedule(16, "squaredcos_cap_v2")
    t = torch.tensor([2, 9, 14])
    e = torch.randn(3, 1, 8, 8, generator=gen(0)).requires_grad_(True)
    x0 = torch.rand(3, 1, 8, 8, generator=gen(1)) * 2 - 1
    u, image = GIDMPlus(coordinates="input").pixel_variable(x0, {"eps": e, "t": t, "free": [e]}, schedule)
    assert torch.allclose(schedule.add_noise(x0, e.detach(), t), u, atol=1e-6)  # starts at x0's input
    x_t = schedule.add_noise(image(u), e, t)
    assert torch.allclose(x_t, u, atol=1e-4)
    (grad_e,) = torch.autograd.grad(x_t.sum(), e)
    assert grad_e.abs().max() < 1e-3
    v, same = GIDMPlus(coordinates="image").pixel_variable(x0, {"eps": e, "t": t, "free": [e]}, schedule)
    assert torch.equal(same(v), x0)
    with pytest.raises(AttackError, match="coordinates"):
        v, _, obs, secrets = diffusion_fedsgd
        GIDMPlus(phases="pixel", coordinates="latent").reconstruct(v, expose(obs, ThreatModel(), secrets), generator=gen(0))


def test_bn_mode_batch_matches_the_clients_batchnorm_forward(digits):
    # resnet-bn, a FedSGD gradient: at the true images the attacker's gradient
    # equals the client's with bn_mode "batch" (batch statistics, as the client trained), not with "eval"
    # (the sent running statistics); the sent buffers are left as they were
    v = classifier("resnet-bn")
    x, y = batch(digits, range(4))
    obs, secrets = client_exchange(v.model, v.task, x, y, generator=gen(0), mode="fedsgd")
    sent = {k: t.clone() for k, t in obs.sent.items()}
    rel = {}
    for mode in ("batch", "eval"):
        inp = expose(obs, ThreatModel(bn_mode=mode), secrets)
        fn = Functional(v, inp.sent, inp.bn_mode)
        g = fn.grads(fn.loss(x, y), create_graph=False)
        target = [inp.update[n] for n in fn.names]
        rel[mode] = float(sum((a - b).pow(2).sum() for a, b in zip(g, target)).sqrt()
                          / sum(b.pow(2).sum() for b in target).sqrt())
    assert rel["batch"] < 1e-4 and rel["eval"] > 0.05
    assert all(torch.equal(sent[k], obs.sent[k]) for k in sent)
    with pytest.raises(AttackError, match="bn_mode"):
        Functional(v, obs.sent, "running")


def test_solve_eps_recovers_the_clients_noise_at_its_input(digits):
    # the FedSGD gradient is linear in eps for a fixed input x_t: at the client's x_t the least-squares
    # solve returns its eps (per-sample t, batch 2); at a perturbed input it stays close
    from attacks.gidm_plus import solve_eps
    v = diffusion_victim()
    x, y = batch(digits, [0, 1])
    obs, secrets = client_exchange(v.model, v.task, x, y, t_mode="per-sample", generator=gen(2))
    inp = expose(obs, ThreatModel(), secrets)
    fn = Functional(v, inp.sent)
    target = [inp.update[n] for n in fn.names]
    x_t = v.task.schedule.add_noise(x, secrets.eps, secrets.t)
    e = solve_eps(fn, x_t, secrets.t, None, target)
    assert F.cosine_similarity(e.flatten(), secrets.eps.flatten(), dim=0) > 0.999
    near = solve_eps(fn, x_t + 0.05 * torch.randn(x_t.shape, generator=gen(3)), secrets.t, None, target)
    assert F.cosine_similarity(near.flatten(), secrets.eps.flatten(), dim=0) > 0.9


def test_cache_lock_is_held_by_one_process_at_a_time(tmp_path):
    """Two processes asking for one cache entry at once (the attack benchmark's --jobs): the second
    waits while the first holds the entry's lock, so the victim or prior is trained once."""
    import fcntl
    import subprocess
    import sys

    from attacks.pretrained import cache_lock

    entry, marker = tmp_path / "victim.safetensors", tmp_path / "held"
    code = ("import sys, time; from pathlib import Path; from attacks.pretrained import cache_lock\n"
            f"with cache_lock(Path({str(entry)!r})):\n"
            f"    Path({str(marker)!r}).touch(); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), "the child never took the lock"
        with open(entry.with_name(entry.name + ".lock"), "w") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        child.communicate("", timeout=60)
    with cache_lock(entry):  # released when the holder is done
        pass
