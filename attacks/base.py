"""The one interface every attack implements, and what it returns.

An attack sees three things (STYLE rule 6):
- a ``Victim``: the architecture and the loss the clients train with, which an
  honest-but-curious server knows (its weights come from the observation);
- one or more ``AttackInput`` (attacks/threat_model.py): what the server
  observed, filtered by the ThreatModel;
- a ``torch.Generator``: all of the attack's randomness (dummy-data init,
  restarts) flows from it, so a seed gives the same reconstruction.
It returns a ``Reconstruction``; only attacks/metrics.py compares it with the truth.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.threat_model import AttackInput
from fedsim.models.train import ClassifierTask, DiffusionTask


class AttackError(ValueError):
    """An attack that cannot run on what it was given; one line for the user."""


@dataclass(frozen=True)
class Victim:
    """What the server knows about the clients' model: architecture and loss.

    model: an instance of the architecture (any weights; attacks load AttackInput.sent);
    task: ClassifierTask (cross-entropy) or DiffusionTask (the DDPM loss with its schedule);
    shape: (C, H, W) of one image, in value_range (fedsim images live in [-1, 1])."""

    model: nn.Module
    task: ClassifierTask | DiffusionTask
    shape: tuple[int, int, int]
    num_classes: int
    value_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def is_diffusion(self) -> bool:
        return isinstance(self.task, DiffusionTask)


@dataclass
class Reconstruction:
    images: torch.Tensor  # (B, C, H, W) in the victim's value_range
    labels: torch.Tensor | None = None  # (B,) recovered labels (classifiers)
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (iteration, objective, seconds)
    iterations: int | None = None  # run in all (None: unknown; the history is thinned)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. recovered t and eps (GIDM+)
    wall_s: float = 0.0


class Clock:
    """Wall time since construction and a thinned objective history for time-to-PSNR curves."""

    def __init__(self, every: int = 10) -> None:
        self.start, self.every, self.history = time.perf_counter(), every, []
        self.iterations = 0  # iterations run so far (every one, not only the logged ones)

    def log(self, iteration: int, objective: float) -> None:
        """Iteration ``iteration`` (from 0) ended with ``objective``."""
        self.advance_to(iteration + 1)
        if iteration % self.every == 0:
            self.history.append((iteration, float(objective), self.elapsed()))

    def advance_to(self, iterations: int) -> None:
        """Count iterations run without a clock (e.g. GIDM+'s probes)."""
        self.iterations = max(self.iterations, iterations)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class AttackConfig:
    """Options shared by all attacks; each attack extends it with its own."""

    batch_size: int | None = None  # images to reconstruct; default: the observation's num_samples
    iterations: int = 300
    log_every: int = 10


class Attack(ABC):
    """Gradient inversion: observation(s) -> Reconstruction.

    Subclasses set ``name`` and ``Config`` and implement ``reconstruct``; ``fuses`` says
    whether it uses every AttackInput of a list (several observations of one client, e.g.
    several rounds) or only the first."""

    name: ClassVar[str]
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    fuses: ClassVar[bool] = False

    def __init__(self, cfg: AttackConfig | None = None, **options: Any) -> None:
        self.cfg = cfg if cfg is not None else make_config(self.Config, options)

    @abstractmethod
    def reconstruct(self, victim: Victim, inputs: AttackInput | Sequence[AttackInput], *,
                    generator: torch.Generator) -> Reconstruction: ...

    # helpers shared by subclasses -------------------------------------------------------------
    def batch_size(self, inp: AttackInput) -> int:
        if self.cfg.batch_size:
            return int(self.cfg.batch_size)
        if inp.num_samples:
            return int(inp.num_samples)
        raise AttackError(f"{self.name}: the number of samples is unknown to the attacker "
                          "(threat model num_samples = false); set the attack's batch_size")


def as_list(inputs: AttackInput | Sequence[AttackInput]) -> list[AttackInput]:
    return [inputs] if isinstance(inputs, AttackInput) else list(inputs)


def make_config(cls: type[AttackConfig], options: dict[str, Any]) -> AttackConfig:
    """Build ``cls`` from kebab- or snake-case keys; an unknown key is an AttackError naming the known ones."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in known:
            raise AttackError(f"unknown attack option '{key}'; known: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in known))}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def random_images(n: int, shape: tuple[int, int, int], value_range: tuple[float, float],
                  generator: torch.Generator, init: str = "randn") -> torch.Tensor:
    """Dummy images (n, C, H, W): "randn" N(0, 1) clamped to the box, "uniform" over the box,
    or "zeros" (mid-grey)."""
    lo, hi = value_range
    if init == "uniform":
        return lo + (hi - lo) * torch.rand((n, *shape), generator=generator)
    if init == "zeros":
        return torch.full((n, *shape), (lo + hi) / 2)
    return torch.randn((n, *shape), generator=generator).clamp(lo, hi)
