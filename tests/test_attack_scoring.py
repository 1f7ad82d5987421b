"""Honest scoring of attacks (attacks/scoring.py, attacks/trials.py, attacks/baselines.py) and the
simulation-only secrets a recorded client writes (fedsim/records/secrets.py).

A recorded run is built in-process: the real ClientApp trains on a TRAIN message the server
marked, writes its secrets, and the reply is stored as the Recording wrapper stores it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from client_messages import context

from attacks import ATTACKS
from attacks.base import Attack, Reconstruction
from attacks.config import load_attack_config
from attacks.runner import run_attack
from attacks.scoring import Targets, score_against
from attacks.threat_model import Secrets
from attacks.trials import recorded_trial
from fedsim.app import client_app
from fedsim.config import RunConfig, write_toml
from fedsim.data.clients import client_partition, dataset
from fedsim.models.train import ClassifierTask, make_optimizer, make_task
from fedsim.models.workspace import fresh_model
from fedsim.records import secrets
from fedsim.records.observations import Observation, save
from fedsim.records.wire import to_array_record, to_state_dict

pytestmark = pytest.mark.usefixtures("task_identity", "one_thread")

FEDSGD = RunConfig(model="cnn", dataset="digits", num_clients=4, clients_per_round=4, partition="iid",
                  mode="fedsgd", batch_size=3)
PID = 1


def train_message(cfg: RunConfig, run, rnd: int = 1, mark: bool = True) -> tuple[Message, dict]:
    sent = fresh_model(cfg, dataset(cfg, "train")).state_dict()
    content = RecordDict({"arrays": to_array_record(sent), "config": ConfigRecord({"server-round": rnd})})
    if mark:  # what strategies/wrappers/secrets.py adds in simulation
        content[secrets.RECORD] = ConfigRecord({"dir": str(run)})
    return Message(content, dst_node_id=100 + PID, message_type=MessageType.TRAIN), sent


def recorded_run(tmp_path, cfg: RunConfig = FEDSGD, mark: bool = True):
    """A run folder with client PID's round-1 observation (and, if marked, its secrets)."""
    run = tmp_path / "run"
    run.mkdir()
    write_toml(cfg.replace(out_dir=str(run)), run / "config.toml")
    msg, sent = train_message(cfg, run, mark=mark)
    reply = client_app.train(msg, context(cfg, PID)).content
    save(Observation(server_round=1, partition_id=PID, sent=sent, received=to_state_dict(reply["arrays"]),
                     payload=str(reply["meta"]["payload"]), num_examples=int(reply["metrics"]["num-examples"]),
                     metrics={"steps": int(reply["meta"]["steps"])}, config=dict(msg.content["config"])), run)
    return run, reply


class Replay(Attack):
    """A stand-in attack that returns the images it is given: the scoring is under test."""

    name = "replay"

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images

    def reconstruct(self, victim, inputs, *, generator):
        return Reconstruction(images=self.images.clone())


def replay(monkeypatch, tmp_path, run, images: torch.Tensor, name: str, **config) -> list[dict]:
    monkeypatch.setitem(ATTACKS, "replay", lambda **_: Replay(images))
    cfg = load_attack_config({"attack": "replay", **{k.replace("_", "-"): v for k, v in config.items()}})
    return run_attack(cfg, tmp_path / name, from_run=run, client=PID)


def test_fedsgd_secrets_are_the_batch_the_gradient_came_from(tmp_path):
    run, reply = recorded_run(tmp_path)
    sec = secrets.load(run, 1, PID)
    train = dataset(FEDSGD, "train")
    part = client_partition(FEDSGD, train.labels)[PID]
    assert sec.payload == "gradient" and sec.steps == 1 and len(sec.indices) == FEDSGD.batch_size
    assert set(sec.indices.tolist()) <= set(part.tolist()) and sec.t is None and sec.eps is None
    # the gradient of the mean loss over exactly those samples is the reply
    model = fresh_model(FEDSGD, train)
    idx = sec.indices
    ClassifierTask().loss(model, train.images[idx], torch.as_tensor(train.labels[idx.numpy()])).mean().backward()
    got = to_state_dict(reply["arrays"])
    assert all(torch.allclose(p.grad, got[n], atol=1e-6) for n, p in model.named_parameters())


def test_recorded_fedsgd_is_scored_against_its_batch(tmp_path, monkeypatch):
    """Targets = the batch in order; a reconstruction of other partition images scores low against it,
    while the old best-of-partition matching would call it perfect (it still does without the file)."""
    run, _ = recorded_run(tmp_path)
    batch = secrets.load(run, 1, PID).indices
    train = dataset(FEDSGD, "train")
    part = torch.from_numpy(client_partition(FEDSGD, train.labels)[PID])
    trial = recorded_trial(run, PID, 1)
    assert trial.targets.kind == "batch" and torch.equal(trial.targets.images, train.images[batch])
    assert trial.targets.secrets.labels.tolist() == train.labels[batch.numpy()].tolist()
    exact = replay(monkeypatch, tmp_path, run, train.images[batch.flip(0)], "exact")[0]
    assert exact["truth"] == "batch" and exact["psnr"] == math.inf and exact["batch_size"] == 3
    others = part[~torch.isin(part, batch)][:3]
    wrong = replay(monkeypatch, tmp_path, run, train.images[others], "wrong")[0]
    assert wrong["truth"] == "batch" and wrong["psnr"] < 30
    secrets.path_of(run, 1, PID).unlink()  # an older run: no secrets file
    old = replay(monkeypatch, tmp_path, run, train.images[others], "old")[0]
    assert old["truth"] == "partition (best match)" and old["psnr"] == math.inf


def test_grey_baseline_matches_the_hand_computed_psnr(tmp_path, monkeypatch):
    run, _ = recorded_run(tmp_path)
    batch = secrets.load(run, 1, PID).indices
    train = dataset(FEDSGD, "train")
    rows = replay(monkeypatch, tmp_path, run, train.images[batch], "grey")
    assert [r["attack"] for r in rows] == ["replay", "baseline-grey", "baseline-mean", "baseline-random"]
    grey = rows[1]
    x = train.images[batch].double()  # in [-1, 1]: range 2, grey 0
    by_hand = np.mean([10 * math.log10(2.0 ** 2 / float((xi - 0.0).pow(2).mean())) for xi in x])
    assert grey["truth"] == "batch" and grey["psnr"] == pytest.approx(by_hand, abs=1e-9)
    assert grey["label_acc"] is None and grey["t_acc"] is None
    # without the secrets file the same grey image is matched to its best partition images: flattered
    secrets.path_of(run, 1, PID).unlink()
    flattered = replay(monkeypatch, tmp_path, run, train.images[batch], "old")[1]
    assert flattered["truth"] == "partition (best match)" and flattered["psnr"] > grey["psnr"] + 0.5


def test_random_baseline_never_draws_a_target_and_is_seeded(tmp_path, monkeypatch):
    run, _ = recorded_run(tmp_path)
    trial = recorded_trial(run, PID, 1)
    train = dataset(FEDSGD, "train")
    part = client_partition(FEDSGD, train.labels)[PID]
    assert len(trial.pool) == len(train) - len(part)
    flat = trial.pool.flatten(1)
    assert not any(bool((flat == x.flatten()).all(1).any()) for x in trial.targets.images)
    a = replay(monkeypatch, tmp_path, run, trial.targets.images, "a")[3]
    b = replay(monkeypatch, tmp_path, run, trial.targets.images, "b")[3]
    assert a["attack"] == "baseline-random" and a["psnr"] == b["psnr"] and a["psnr"] < 30


def test_one_assignment_for_every_per_sample_metric():
    """Reconstruction = truth permuted, extras permuted the same way: every metric is perfect.
    Comparing t / eps in the reconstruction's own order (ignoring the assignment) would not be."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand((4, 1, 8, 8), generator=g) * 2 - 1
    t, eps = torch.tensor([0, 5, 9, 14]), torch.randn((4, 1, 8, 8), generator=g)
    targets = Targets(images, Secrets(labels=torch.tensor([0, 1, 2, 3]), t=t, eps=eps), "batch")
    perm = torch.tensor([2, 0, 3, 1])
    s = score_against(images[perm], targets, value_range=(-1.0, 1.0), labels=torch.tensor([2, 0, 3, 1]),
                      extras={"t": t[perm], "eps": eps[perm]})
    assert s["psnr"] == math.inf and s["ssim"] == pytest.approx(1.0) and s["label_acc"] == 1.0
    assert s["t_acc"] == 1.0 and s["t_abs_err"] == 0.0 and s["eps_cos"] == pytest.approx(1.0, abs=1e-12)
    truth_idx, recon_idx = s["pairs"]
    assert torch.equal(perm[recon_idx], truth_idx)
    # extras in the truth's order while the images are permuted: the pairs say they are wrong
    off = score_against(images[perm], targets, value_range=(-1.0, 1.0), extras={"t": t, "eps": eps})
    assert off["t_acc"] == 0.0 and off["eps_cos"] < 0.5


def test_fewer_reconstructions_than_targets_pick_their_best_and_say_so():
    g = torch.Generator().manual_seed(1)
    images = torch.rand((5, 1, 8, 8), generator=g) * 2 - 1
    targets = Targets(images, Secrets(t=torch.arange(5)), "samples used")
    s = score_against(images[[4, 1]], targets, value_range=(-1.0, 1.0), extras={"t": torch.tensor([4, 1])})
    assert s["truth"] == "samples used (best match)" and s["psnr"] == math.inf and s["t_acc"] == 1.0
    assert s["pairs"][0].tolist() == [1, 4]


def test_secrets_only_when_marked_and_deterministic(tmp_path):
    """Only a message the server marked makes the client write (the run config names the run
    folder on a deployment too, so the client must not write to it on its own); same seed, same file."""
    run = tmp_path / "run"
    cfg = FEDSGD.replace(out_dir=str(run), record_clients="all")
    msg, _ = train_message(cfg, run, rnd=2, mark=False)
    client_app.train(msg, context(cfg, PID))
    assert not (run / "secrets").exists()  # a deployment's message: nothing written
    msg, _ = train_message(cfg, run, rnd=2)
    client_app.train(msg, context(cfg, PID))
    first = secrets.load(run, 2, PID)
    client_app.train(msg, context(cfg, PID))
    again = secrets.load(run, 2, PID)
    assert torch.equal(first.indices, again.indices) and torch.equal(first.step, again.step)
    msg, _ = train_message(cfg, run, rnd=3)  # another round: another draw
    client_app.train(msg, context(cfg, PID))
    assert not torch.equal(secrets.load(run, 3, PID).indices, first.indices)
    assert sorted(p.relative_to(run).as_posix() for p in (run / "secrets").rglob("*")) == [
        "secrets/round_002", f"secrets/round_002/client_{PID:04d}.safetensors",
        "secrets/round_003", f"secrets/round_003/client_{PID:04d}.safetensors"]


def test_local_training_secrets_replay_to_the_reply(tmp_path):
    """Local training: every epoch is a permutation of the partition, and SGD over the recorded
    batches, in order, reproduces the client's weights."""
    cfg = FEDSGD.replace(mode="fedavg", local_epochs=2, batch_size=4, optimizer="sgd", lr=0.1)
    run, reply = recorded_run(tmp_path, cfg)
    sec = secrets.load(run, 1, PID)
    train = dataset(cfg, "train")
    part = client_partition(cfg, train.labels)[PID]
    per_epoch = math.ceil(len(part) / 4)
    assert sec.payload == "weights" and sec.epochs == 2 and sec.steps == 2 * per_epoch
    for e in range(2):
        used = sec.indices[(sec.step // per_epoch) == e]
        assert sorted(used.tolist()) == sorted(part.tolist())
    trial = recorded_trial(run, PID, 1)
    assert trial.targets.kind == "samples used" and len(trial.targets.images) == len(part)
    model = fresh_model(cfg, train)
    opt = make_optimizer(model, "sgd", 0.1)
    for k in range(sec.steps):
        idx = sec.indices[sec.step == k]
        opt.zero_grad()
        ClassifierTask().loss(model, train.images[idx], torch.as_tensor(train.labels[idx.numpy()])).mean().backward()
        opt.step()
    got = to_state_dict(reply["arrays"])
    assert all(torch.allclose(v, got[n], atol=1e-5) for n, v in model.state_dict().items())


def test_diffusion_secrets_hold_the_noise_the_gradient_came_from(tmp_path):
    cfg = FEDSGD.replace(model="ddpm-tiny", timesteps=16, sample_steps=8, beta_schedule="squaredcos_cap_v2")
    run, reply = recorded_run(tmp_path, cfg)
    sec = secrets.load(run, 1, PID)
    assert sec.t.shape == (3,) and sec.eps.shape == (3, 1, 8, 8)
    train = dataset(cfg, "train")
    model = fresh_model(cfg, train)
    idx = sec.indices
    make_task(cfg.model, 16, "squaredcos_cap_v2").loss(
        model, train.images[idx], torch.as_tensor(train.labels[idx.numpy()]), generator=None,
        t=sec.t, eps=sec.eps).mean().backward()
    got = to_state_dict(reply["arrays"])
    assert all(torch.allclose(p.grad, got[n], atol=1e-5) for n, p in model.named_parameters() if p.grad is not None)
    trial = recorded_trial(run, PID, 1)  # FedSGD: per target, in the batch's order
    assert torch.equal(trial.targets.secrets.t, sec.t) and torch.equal(trial.targets.secrets.eps, sec.eps)


def test_noise_of_local_training_is_aligned_per_epoch_to_the_targets():
    """Two epochs of 2 steps over samples {7, 3, 5, 9}: targets in first-use order, t[e, k] the
    timestep target k got in epoch e; a sample used twice in one epoch gives no per-target t."""
    from attacks.trials import per_target

    sec = secrets.ClientSecrets(indices=torch.tensor([7, 3, 5, 9, 9, 5, 3, 7]),
                                step=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), payload="weights", epochs=2, steps=4,
                                t=torch.tensor([10, 11, 12, 13, 20, 21, 22, 23]))
    order = sec.first_use()
    assert order.tolist() == [7, 3, 5, 9]
    assert per_target(sec, order, sec.t).tolist() == [[10, 11, 12, 13], [23, 22, 21, 20]]
    twice = secrets.ClientSecrets(indices=torch.tensor([7, 7]), step=torch.tensor([0, 0]), payload="weights",
                                  epochs=1, steps=1, t=torch.tensor([1, 2]))
    assert per_target(twice, twice.first_use(), twice.t) is None
