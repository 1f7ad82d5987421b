"""Victims like fedsim's clients (attacks/local_update.py, attacks/simulation.py, the momentum
correction of attacks/objectives.py): the observation's config says what the client ran, the
simulation attack replays it (optimiser, reshuffled batch order when granted), and AGIC's
approximate gradient is scaled for momentum.

The recorded runs are built in-process (tests/recorded_setup.py): the real ClientApp trains
with the config the ServerApp sends and writes its secrets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attacks.agic import AGIC
from attacks.base import AttackError, Victim
from attacks.local_update import fixed_batches, unroll
from attacks.objectives import Functional, effective_steps, observed_gradient
from attacks.simulation import Simulation
from attacks.threat_model import LocalHparams, ThreatModel, expose, local_hparams
from attacks.trials import recorded_trial
from fedsim.config import RunConfig
from fedsim.models.train import ClassifierTask, train_local
from fedsim.records import secrets
from fedsim.records.observations import Observation
from recorded_setup import recorded_run

pytestmark = pytest.mark.usefixtures("task_identity", "one_thread")

# 20 iid clients of the 1437 digits: 72 samples, batches of 16 (the last of 8), 2 epochs = 10 steps
BASE = RunConfig(model="cnn", dataset="digits", num_clients=20, clients_per_round=4, partition="iid",
                 local_epochs=2, batch_size=16)
PID = 3
CLIENTS = {
    "momentum-sgd": BASE.replace(optimizer="sgd", lr=0.05, momentum=0.9),
    "adam": BASE.replace(optimizer="adam", lr=1e-3),
    "clipped-sgd": BASE.replace(optimizer="sgd", lr=0.1, momentum=0.5, grad_clip=0.5),
}


def simulated_update(trial, inp):
    fn = Functional(trial.victim, inp.sent)
    x, y = trial.targets.images, trial.targets.secrets.labels
    batches = inp.batches if inp.batches is not None else fixed_batches(len(x), inp.hparams.batch_size,
                                                                        inp.hparams.epochs, inp.hparams.steps)
    params = unroll(fn, x, y, inp.hparams, batches, create_graph=False)
    return {n: (params[n] - fn.params[n]).detach() for n in fn.names}


def mismatch(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all tensors."""
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    return math.sqrt(num / sum(float(v.pow(2).sum()) for v in b.values()))


@pytest.mark.parametrize("name", list(CLIENTS))
def test_simulation_with_the_granted_order_reproduces_the_client_update(tmp_path, name):
    """At the true images, with the batch order from the secrets, unroll replays train_local
    (per-epoch reshuffle, momentum / Adam / clip) to float noise; the fixed assumed order does not."""
    cfg = CLIENTS[name]
    run = recorded_run(tmp_path, cfg, PID)
    trial = recorded_trial(run, PID, 1)
    obs = trial.observations[0]
    inp = expose(obs, ThreatModel(labels="known", batch_order_known=True), trial.granted[0])
    h = inp.hparams
    assert (h.optimizer, h.momentum, h.grad_clip, h.shuffle) == (cfg.optimizer, cfg.momentum, cfg.grad_clip,
                                                                  "per-epoch")
    assert len(inp.batches) == h.steps == 10
    observed = {n: v.float() for n, v in obs.update().items()}
    assert mismatch(simulated_update(trial, inp), observed) < 1e-4  # measured 2e-7 .. 6e-7
    # without the grant the attack assumes one fixed order: the second epoch's batches differ
    blind = expose(obs, ThreatModel(labels="known"), trial.granted[0])
    assert blind.batches is None
    assert mismatch(simulated_update(trial, blind), observed) > 1e-3  # measured 0.15 .. 0.29
    _, _, distance = Simulation().setup(trial.victim, [inp])
    x, y = trial.targets.images, trial.targets.secrets.labels
    assert float(distance(x, y).detach()) < 1e-6


def test_simulation_refuses_an_optimizer_it_cannot_replay(tmp_path):
    run = recorded_run(tmp_path, CLIENTS["momentum-sgd"], PID)
    trial = recorded_trial(run, PID, 1)
    obs = trial.observations[0]
    obs.config["optimizer"] = "rmsprop"
    inp = expose(obs, ThreatModel(labels="known", batch_order_known=True), trial.granted[0])
    _, _, distance = Simulation().setup(trial.victim, [inp])
    with pytest.raises(AttackError, match="rmsprop"):
        distance(trial.targets.images, trial.targets.secrets.labels)


def test_observation_config_states_what_the_client_ran(tmp_path):
    """The client trains with the optimizer the server sent, not its run config's: a message saying
    sgd with momentum gives the same weights as train_local with sgd and momentum."""
    run = recorded_run(tmp_path, CLIENTS["momentum-sgd"], PID)
    obs = recorded_trial(run, PID, 1).observations[0]
    assert {k: obs.config[k] for k in ("optimizer", "momentum", "grad-clip", "shuffle")} == {
        "optimizer": "sgd", "momentum": 0.9, "grad-clip": 0.0, "shuffle": "per-epoch"}
    assert local_hparams(obs) == LocalHparams(lr=0.05, epochs=2, batch_size=16, steps=10, optimizer="sgd",
                                              momentum=0.9, grad_clip=0.0, shuffle="per-epoch")
    sec = secrets.load(run, 1, PID)
    assert sec.epochs == 2 and sec.steps == 10


def test_effective_steps_by_hand():
    assert effective_steps(7) == 7 and effective_steps(1, 0.9) == pytest.approx(1.0)
    assert effective_steps(2, 0.5) == pytest.approx(1 + 1.5)  # b_1 = g, b_2 = 1.5 g
    assert effective_steps(3, 0.5) == pytest.approx(1 + 1.5 + 1.75)


class Linear(nn.Module):
    """logits = x W^T + b on flattened images; with ``LinearLoss`` the gradient is the same at every w."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class LinearLoss:
    """L(w; x, y) = mean_i <c, logits_i>: linear in (W, b), so grad_W = c mean_i x_i^T, grad_b = c."""

    c = torch.tensor([1.0, -2.0, 0.5])

    def loss(self, model, x, y, *, generator=None, **_):
        return model(x) @ self.c


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_agic_momentum_correction_recovers_the_constant_gradient(momentum):
    """Identical images: every batch has the same, constant gradient g. After E K momentum-SGD steps
    of train_local, AGIC's g~ = -Delta w / (lr S) is g (without the correction it is S / (E K) = 3.6 g)."""
    model = Linear()
    x = torch.full((8, 1, 2, 2), 0.5).add(torch.arange(4.0).view(1, 1, 2, 2))  # 8 copies of one image
    y = torch.zeros(8, dtype=torch.long)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    stats = train_local(model, LinearLoss(), x, y, epochs=2, batch_size=2, lr=0.01, optimizer="sgd",
                        momentum=momentum, generator=torch.Generator().manual_seed(0))
    true = {"fc.weight": LinearLoss.c[:, None] * x[0].flatten()[None, :], "fc.bias": LinearLoss.c}
    obs = Observation(server_round=1, partition_id=0, sent=sent, received=model.state_dict(), payload="weights",
                      num_examples=8, metrics={"steps": stats.steps},
                      config={"lr": 0.01, "local-epochs": 2, "batch-size": 2, "optimizer": "sgd",
                              "momentum": momentum, "shuffle": "per-epoch"})
    inp = expose(obs, ThreatModel(labels="known"))
    victim = Victim(Linear(), ClassifierTask(), (1, 2, 2), 3)
    for target in (observed_gradient(inp, ["fc.weight", "fc.bias"]), AGIC().setup(victim, [inp])[1]):
        for got, name in zip(target, ["fc.weight", "fc.bias"]):
            assert torch.allclose(got, true[name], rtol=1e-4, atol=1e-5), (name, got, true[name])


def test_per_epoch_dummies_represent_a_reshuffled_update_that_one_fixed_order_cannot():
    """Dimitrov et al.'s per-epoch variables: 2 epochs x 2 steps of 2 images, the second epoch reshuffled.
    Each epoch's own copies, placed as that epoch's batches were, reproduce the client's update exactly;
    the true images in one fixed order do not. The epoch prior vanishes when the copies are a permutation
    of each other, and the reconstruction is their matched mean: the images themselves."""
    from attacks.victims import build_victim

    g = torch.Generator().manual_seed(0)
    victim = Victim(build_victim("convnet", (1, 8, 8), 10, seed=2), ClassifierTask(), (1, 8, 8), 10)
    x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    y = torch.full((4,), 3)  # one label: its placement cannot matter
    h = LocalHparams(lr=0.05, epochs=2, batch_size=2, steps=4, shuffle="per-epoch")
    order = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([3, 0]), torch.tensor([1, 2])]
    sent = {k: v.detach().clone() for k, v in victim.model.state_dict().items()}
    fn = Functional(victim, sent)
    local = unroll(fn, x, y, h, order, create_graph=False)
    received = {**sent, **{n: local[n].detach() for n in fn.names}}
    obs = Observation(server_round=1, partition_id=0, sent=sent, received=received, payload="weights",
                      num_examples=4, metrics={"steps": 4},
                      config={"lr": 0.05, "local-epochs": 2, "batch-size": 2, "shuffle": "per-epoch"})
    inp = expose(obs, ThreatModel(labels="known"))
    per_epoch, fixed = Simulation(per_epoch=True), Simulation()
    _, _, d_per_epoch = per_epoch.setup(victim, [inp])
    _, _, d_fixed = fixed.setup(victim, [inp])
    assert per_epoch.epochs == 2 and fixed.epochs == 1 and per_epoch.dummies(4, [inp]) == 8
    copies = torch.cat([x, x[torch.tensor([3, 0, 1, 2])]])  # epoch 2's batches [3, 0], [1, 2] in fixed slots
    assert float(d_per_epoch(copies, y).detach()) < 1e-6
    assert float(d_fixed(x, y).detach()) > 1e-4  # measured about 3e-3: no single fixed order is the client's
    assert float(per_epoch.prior(copies)) < 1e-12
    assert torch.allclose(per_epoch.images_of(copies), x)
    rec = Simulation(per_epoch=True, iterations=2).reconstruct(victim, inp, generator=torch.Generator().manual_seed(1))
    assert rec.images.shape == x.shape


def test_fixed_batches_with_more_steps_than_the_images_fill():
    """A summed update's step count (SecAgg over two clients) can pass the n images: those steps take none."""
    batches = fixed_batches(8, 4, 1, steps=5)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in fixed_batches(6, 4, 2)] == [[0, 1, 2, 3], [4, 5], [0, 1, 2, 3], [4, 5]]
