"""What one trial attacks and is scored against: a fresh exchange or recorded observations.

Fresh exchange: ``batch-size`` test-split images (seeded) go through attacks/exchange.py;
the targets are that batch, in order, with its labels, noise and batch order.
Recorded observations (``--from-run DIR --client K --round R``, or ``--rounds R1,R2,...``:
that client's observations of several rounds, for an attack that fuses them): the victim is
rebuilt from the run's config.toml. If the client wrote what it trained on in every one of
those rounds (a simulated run with record-clients, fedsim/records/secrets.py), the targets
are exactly those samples, as the client held them (a backdoor's trigger included): FedSGD's
one batch in its order, or for local training every sample used, in the order of first use
(the first epoch's order), with the (t, eps) each was trained with; over several rounds, the
union of the rounds' samples in the order of first use (round by round), which for a client
that trains full epochs on a fixed partition is its partition. Each observation comes with
what a threat model may grant of it (``Trial.granted``): the targets' labels, that round's
(t, eps) per target where each target was used once per epoch, and its batch order as
positions among the targets. A run without the files for every round (an older run, a
deployment) falls back to the client's whole partition (targets kind "partition", scored
by best match; no batch order).
The baselines' pool is the training split without the targets (for a recorded run, without
the client's whole partition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks.base import Victim
from attacks.config import AttackRunConfig
from attacks.defenses import dp_sgd_accounting
from attacks.exchange import DpSgd, client_exchange, plan
from attacks.pretrained import trained_state
from attacks.scoring import Targets
from attacks.secagg import secure_aggregate
from attacks.threat_model import Secrets
from attacks.victims import build_victim
from fedsim.config import ConfigError, resolve
from fedsim.data.clients import client_partition, dataset, as_held
from fedsim.data.datasets import load_dataset
from fedsim.models.train import make_task
from fedsim.models.workspace import fresh_model
from fedsim.records import secrets as client_secrets
from fedsim.records.observations import Observation, folder_of, load
from fedsim.rng import derive


@dataclass
class Trial:
    victim: Victim
    observations: list[Observation]  # one, or one per fused round (in the order asked)
    granted: list[Secrets]  # per observation: what a threat model may grant of it
    targets: Targets  # what the updates came from; for one observation targets.secrets == granted[0]
    pool: torch.Tensor  # (M, C, H, W) training images outside the targets, for the baselines


TRAINED_SEED = 1_000_000  # trained victims' init and shuffle seed: never a GIDM prior's (cfg.seed)


def dp_sgd_accounting_of(cfg: AttackRunConfig) -> dict[str, float]:
    """The accounted DP-SGD numbers of a fresh exchange under ``cfg`` (sample rate b / n per step)."""
    _, _, b = plan(cfg.batch_size, cfg.local_steps)
    return dp_sgd_accounting(clip=cfg.dp_clip, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                             sample_rate=min(1.0, b / cfg.batch_size), steps=cfg.local_steps * cfg.dp_releases)


def dp_sgd_of(cfg: AttackRunConfig, trial: int) -> DpSgd | None:
    if cfg.defense != "dp-sgd":
        return None
    return DpSgd(cfg.dp_clip, dp_sgd_accounting_of(cfg)["dp_noise_multiplier"],
                 int(derive(cfg.seed, "dp-sgd", trial).integers(2**62)))


def fresh_trial(cfg: AttackRunConfig, trial: int) -> Trial:
    """One client's exchange on ``batch-size`` test images; with defense "secagg", the SecAgg+
    aggregate of ``secagg-clients`` such clients (each its own images and noise), whose K x B
    images are then the targets (the server cannot tell whose they are)."""
    data = load_dataset(cfg.dataset, "test", cfg.dataset_path or None, cfg.image_size)
    k_clients = cfg.secagg_clients if cfg.defense == "secagg" else 1
    if cfg.batch_size * k_clients > len(data):
        raise ConfigError(f"batch-size {cfg.batch_size} x {k_clients} clients > {len(data)} test images of "
                          f"'{cfg.dataset}'")
    idx = np.sort(derive(cfg.seed, "attack-data", trial).choice(len(data), cfg.batch_size * k_clients,
                                                                replace=False))
    images, labels = data.images[idx], torch.as_tensor(data.labels[idx].copy())
    task = make_task(cfg.model, cfg.timesteps, cfg.beta_schedule)
    if cfg.victim_epochs > 0:  # one trained victim (the global model) for every trial and seed
        model = build_victim(cfg.model, data.shape, data.num_classes, seed=TRAINED_SEED, init=cfg.init)
        model.load_state_dict(trained_state(
            model, task, [cfg.model, cfg.init, cfg.timesteps, cfg.beta_schedule], cfg.victim_epochs, TRAINED_SEED,
            dataset=cfg.dataset, dataset_path=cfg.dataset_path or None, image_size=cfg.image_size))
    else:
        model = build_victim(cfg.model, data.shape, data.num_classes, seed=cfg.seed + trial, init=cfg.init)
    exchanges = []
    for k in range(k_clients):
        keys = (trial,) if k == 0 else (trial, k)
        g = torch.Generator().manual_seed(int(derive(cfg.seed, "attack-client", *keys).integers(2**62)))
        part = slice(k * cfg.batch_size, (k + 1) * cfg.batch_size)
        exchanges.append(client_exchange(model, task, images[part], labels[part],
                                         mode="fedsgd" if cfg.local_steps == 1 else "fedavg", lr=cfg.lr,
                                         local_steps=cfg.local_steps, t_mode=cfg.t_mode, generator=g,
                                         dp_sgd=dp_sgd_of(cfg, trial)))
    obs, secrets = exchanges[0] if k_clients == 1 else aggregated(exchanges, seed=int(
        derive(cfg.seed, "secagg", trial).integers(2**31)))
    pool = load_dataset(cfg.dataset, "train", cfg.dataset_path or None, cfg.image_size).images  # targets are test images
    return Trial(Victim(model, task, data.shape, data.num_classes), [obs], [secrets],
                 Targets(images, secrets, "batch"), pool)


def aggregated(exchanges: list[tuple[Observation, Secrets]], *, seed: int) -> tuple[Observation, Secrets]:
    """The SecAgg+ aggregate of several clients' replies (attacks/secagg.py) as one observation of
    their summed examples, with their secrets concatenated (noise per image; no batch order)."""
    first = exchanges[0][0]
    names = list(first.received)
    arrays = secure_aggregate([[o.received[n].detach().double().numpy() for n in names] for o, _ in exchanges],
                              [o.num_examples for o, _ in exchanges], seed=seed)
    received = {n: torch.from_numpy(a).to(first.received[n].dtype) for n, a in zip(names, arrays)}
    obs = Observation(server_round=first.server_round, partition_id=first.partition_id, sent=first.sent,
                      received=received, payload=first.payload,
                      num_examples=sum(o.num_examples for o, _ in exchanges), metrics=first.metrics,
                      config={**first.config, "batch-size": sum(o.num_examples for o, _ in exchanges)})
    secs = [s for _, s in exchanges]

    def cat(values, dim):
        return None if values[0] is None else torch.cat(values, dim=dim)
    epochs = secs[0].t is not None and secs[0].t.dim() == 2
    return obs, Secrets(labels=cat([s.labels for s in secs], 0), eps=cat([s.eps for s in secs], 1 if epochs else 0),
                        t=cat([s.t for s in secs], 1 if epochs else 0), batches=None)


def per_target(sec: client_secrets.ClientSecrets, order: torch.Tensor, values: torch.Tensor | None
               ) -> torch.Tensor | None:
    """values (S, ...) per use -> (N, ...) per target (one epoch) or (E, N, ...) per epoch, the
    targets in ``order``; None if some target was not used exactly once in every epoch."""
    if values is None:
        return None
    pos = {int(i): k for k, i in enumerate(order.tolist())}
    where = torch.tensor([pos[int(i)] for i in sec.indices.tolist()], dtype=torch.long)
    epoch = sec.step // sec.steps_per_epoch
    epochs, n = int(epoch.max()) + 1, len(order)
    uses = torch.bincount(epoch * n + where, minlength=epochs * n)  # of each (epoch, target)
    if not bool((uses == 1).all()):
        return None
    out = values.new_zeros((epochs, n, *values.shape[1:]))
    out[epoch, where] = values
    return out[0] if epochs == 1 else out


def step_batches(sec: client_secrets.ClientSecrets, order: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The batch order: per local step, the (b,) positions in ``order`` of the samples it used, in use order."""
    pos = {int(i): k for k, i in enumerate(order.tolist())}
    where = torch.tensor([pos[int(i)] for i in sec.indices.tolist()], dtype=torch.long)
    return tuple(where[sec.step == k] for k in range(sec.steps))


def _observation(run: Path, client: int, server_round: int) -> Observation:
    path = folder_of(run, server_round, client)
    if not (path / "meta.json").is_file():
        have = sorted(p.relative_to(run).as_posix() for p in run.glob("observations/round_*/client_*"))
        raise ConfigError(f"no observation for client {client} in round {server_round} under {run}; recorded: "
                          + (", ".join(have[:8]) + (" ..." if len(have) > 8 else "") if have else
                             "none (run with record-clients / record-rounds)"))
    obs = load(path)
    if obs.payload == "mask":
        raise ConfigError(f"{path} is SalUn's saliency mask (bits, no update): nothing to reconstruct from")
    return obs


def recorded_trial(run: Path, client: int, rounds: int | Sequence[int]) -> Trial:
    """The client's observations of ``rounds`` (one round, or several to fuse) and their targets."""
    rounds = [rounds] if isinstance(rounds, int) else list(rounds)
    config = run / "config.toml"
    if not config.is_file():
        raise ConfigError(f"--from-run {run}: no config.toml (is it a fedsim run folder?)")
    rc = resolve(config, [])
    observations = [_observation(run, client, r) for r in rounds]
    train = dataset(rc, "train")
    part = torch.from_numpy(client_partition(rc, train.labels)[client])
    held = as_held(rc, train)  # the images as the clients held them
    secs = [client_secrets.load(run, r, client) for r in rounds]
    if any(sec is None for sec in secs):  # an older run, or not a simulation: the best the runner can do
        idx, kind = part, "partition"
        labels = torch.as_tensor(held.labels[idx.numpy()].copy())
        granted = [Secrets(labels=labels) for _ in rounds]
    else:
        idx = torch.tensor(list(dict.fromkeys(i for sec in secs for i in sec.first_use().tolist())), dtype=torch.long)
        kind = "batch" if len(secs) == 1 and secs[0].payload == "gradient" else "samples used"
        labels = torch.as_tensor(held.labels[idx.numpy()].copy())
        granted = [Secrets(labels=labels, eps=per_target(sec, idx, sec.eps), t=per_target(sec, idx, sec.t),
                           batches=step_batches(sec, idx)) for sec in secs]
    outside = torch.ones(len(held), dtype=torch.bool)
    outside[torch.cat([idx, part])] = False  # neither a target nor (for the fallback) the partition
    model = fresh_model(rc, train)
    task = make_task(rc.model, rc.timesteps, rc.beta_schedule)
    scored = granted[0] if len(rounds) == 1 else Secrets(labels=labels)  # (t, eps) differ from round to round
    return Trial(Victim(model, task, train.shape, train.num_classes), observations, granted,
                 Targets(held.images[idx], scored, kind), held.images[outside])
