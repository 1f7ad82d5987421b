"""What an honest-but-curious server knows, as one typed object.

The server sees the global weights it sent and one client's un-aggregated
upload (fedsim/records/observations.py). Everything else -- labels, the number of
examples, local hyper-parameters, the batch order, the diffusion noise and
timesteps -- is knowledge the experimenter grants explicitly here. ``expose``
applies the grant: it builds the AttackInput an attack receives, taking granted
secrets from ``Secrets`` (ground truth held by the benchmark) and nothing else.
Every result records the ThreatModel it ran under (``as_dict``).

The local hyper-parameters are read from the observation's config, what the
server sent and the client trained with (fedsim/app/server_app.py train_config):
lr, local epochs, batch size, optimizer (sgd | adam), momentum, grad clip and the
shuffle policy ("per-epoch": fedsim's clients draw a fresh permutation of their
samples every local epoch from a generator derived from (seed, "train", round,
client), which the server does not know; "fixed": attacks/exchange.py's step k of
every epoch takes samples [k B, (k+1) B)). An observation that does not state
them (recorded before they were sent) is read as plain SGD in a fixed order, what
the attacks assumed then. The batch order itself (which samples each local step
used) is a secret: ``batch_order_known`` grants it where the benchmark holds it
(a fresh exchange; a simulated run's secrets files), else attacks assume the
fixed order.

``bn_mode`` is the attacker's assumption about BatchNorm layers (victims with BN only):
"batch" normalises the dummies by their own batch statistics, as the client's training
forward did with its batch (exact at the truth); "eval" uses the running statistics the
server sent (public), which a client in training mode did not use; "buffers" normalises as
"batch" does and adds a statistics prior: the batch statistics recovered from the running
statistics a FedAvg client sends back (attacks/bn_prior.py; IG, the simulation attack, AGIC).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from fedsim.records.observations import Observation


@dataclass(frozen=True)
class ThreatModel:
    labels: Literal["known", "recovered", "unknown"] = "recovered"
    num_samples: bool = True  # the reply's num-examples is trusted
    local_hparams: bool = True  # lr, local epochs, steps, batch size, optimizer, momentum, grad clip, shuffle policy
    eps_known: bool = False  # diffusion: the client's noise eps
    t_known: bool = False  # diffusion: the client's timesteps t
    batch_order_known: bool = False  # which samples each local step used (simulation: from the secrets files)
    prior: str = ""  # path of a trained diffusion model of the same domain (GIDM)
    bn_mode: Literal["batch", "eval", "buffers"] = "batch"  # BatchNorm in the attacker's forward: see below

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Secrets:
    """Ground truth held by the benchmark; attacks never receive this object."""

    labels: torch.Tensor | None = None  # (B,)
    eps: torch.Tensor | None = None  # (B, C, H, W), or (E, B, C, H, W): the noise per local epoch
    t: torch.Tensor | None = None  # (B,), or (E, B)
    batches: tuple[torch.Tensor, ...] | None = None  # per local step, (b,) positions of its samples among the targets


@dataclass(frozen=True)
class LocalHparams:
    lr: float
    epochs: int
    batch_size: int
    steps: int | None = None  # total local steps, when the reply says
    optimizer: str = "sgd"  # sgd | adam (torch.optim defaults, a fresh optimizer each round)
    momentum: float = 0.0  # sgd: heavy-ball momentum beta (dampening 0, no Nesterov)
    grad_clip: float = 0.0  # > 0: each step's gradient norm clipped to it
    shuffle: str = "fixed"  # per-epoch (fedsim's clients) | fixed (attacks/exchange.py)


@dataclass(frozen=True)
class AttackInput:
    sent: dict[str, torch.Tensor]  # global weights w_0
    update: dict[str, torch.Tensor]  # Delta w = w_local - w_0, or the FedSGD gradient
    payload: str  # "weights" | "gradient"
    num_samples: int | None
    hparams: LocalHparams | None
    labels: torch.Tensor | None
    eps: torch.Tensor | None
    t: torch.Tensor | None
    batches: tuple[torch.Tensor, ...] | None = None  # granted batch order: per step, positions among the dummies
    bn_mode: str = "batch"  # the threat model's BatchNorm assumption


def expose(obs: Observation, threat: ThreatModel, secrets: Secrets = Secrets(),
           hparams: LocalHparams | None = None) -> AttackInput:
    """The attacker's view of one observation under ``threat``."""
    def granted(flag: bool, value):
        return value if flag else None

    if hparams is None and threat.local_hparams and "lr" in obs.config:
        hparams = local_hparams(obs)
    return AttackInput(
        sent=obs.sent, update=obs.update(), payload=obs.payload,
        num_samples=granted(threat.num_samples, obs.num_examples),
        hparams=granted(threat.local_hparams, hparams),
        labels=granted(threat.labels == "known", secrets.labels),
        eps=granted(threat.eps_known, secrets.eps),
        t=granted(threat.t_known, secrets.t),
        batches=granted(threat.batch_order_known, secrets.batches),
        bn_mode=threat.bn_mode,
    )


def local_hparams(obs: Observation) -> LocalHparams:
    """What the observation's config says the client ran (defaults: plain SGD, fixed order)."""
    c, steps = obs.config, obs.metrics.get("steps")
    return LocalHparams(float(c["lr"]), int(c.get("local-epochs", 1)), int(c.get("batch-size", obs.num_examples)),
                        int(steps) if steps else None, optimizer=str(c.get("optimizer", "sgd")),
                        momentum=float(c.get("momentum", 0.0)), grad_clip=float(c.get("grad-clip", 0.0)),
                        shuffle=str(c.get("shuffle", "fixed")))
