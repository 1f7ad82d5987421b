"""What an honest-but-curious server knows, as one typed object.

The server sees the global weights it sent and one client's un-aggregated
upload (fedsim/records/observations.py). Everything else -- labels, the number of
examples, local hyper-parameters, the diffusion noise and timesteps -- is
knowledge the experimenter grants explicitly here. ``expose`` applies the
grant: it builds the AttackInput an attack receives, taking granted secrets
from ``Secrets`` (ground truth held by the benchmark) and nothing else. Every
result records the ThreatModel it ran under (``as_dict``).
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
    local_hparams: bool = True  # lr, local epochs, steps per epoch, batch size
    eps_known: bool = False  # diffusion: the client's noise eps
    t_known: bool = False  # diffusion: the client's timesteps t
    prior: str = ""  # path of a trained diffusion model of the same domain (GIDM)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Secrets:
    """Ground truth held by the benchmark; attacks never receive this object."""

    labels: torch.Tensor | None = None  # (B,)
    eps: torch.Tensor | None = None  # (B, C, H, W), or (E, B, C, H, W): the noise per local epoch
    t: torch.Tensor | None = None  # (B,), or (E, B)


@dataclass(frozen=True)
class LocalHparams:
    lr: float
    epochs: int
    batch_size: int
    steps: int | None = None  # total local steps, when the reply says


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


def expose(obs: Observation, threat: ThreatModel, secrets: Secrets = Secrets(),
           hparams: LocalHparams | None = None) -> AttackInput:
    """The attacker's view of one observation under ``threat``."""
    def granted(flag: bool, value):
        return value if flag else None

    if hparams is None and threat.local_hparams and "lr" in obs.config:
        steps = obs.metrics.get("steps")
        hparams = LocalHparams(float(obs.config["lr"]), int(obs.config.get("local-epochs", 1)),
                               int(obs.config.get("batch-size", obs.num_examples)),
                               int(steps) if steps else None)
    return AttackInput(
        sent=obs.sent, update=obs.update(), payload=obs.payload,
        num_samples=granted(threat.num_samples, obs.num_examples),
        hparams=granted(threat.local_hparams, hparams),
        labels=granted(threat.labels == "known", secrets.labels),
        eps=granted(threat.eps_known, secrets.eps),
        t=granted(threat.t_known, secrets.t),
    )
