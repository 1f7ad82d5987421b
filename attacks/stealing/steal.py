"""Data-free, label-only model stealing: MEGA and its baselines on one query budget.

Each step draws a batch of queries, asks the oracle for their labels (the budget counts them),
trains the substitute S on them with cross-entropy, then, where there is a generator, takes one
generator step on the same latent codes:

- ``mega`` (Hong et al. 2022): the generator and the substitute collaborate: G makes S
  confident on its queries, by minimising the entropy of S(G(z)) (``objective = "entropy"``)
  or maximising its largest softmax (``"max-softmax"``); which one the paper uses is unverified.
  Alone, this lets the generator settle on queries of one class (the substitute then learns a
  constant); ``balance`` > 0 adds -balance x H(mean of S(G(z)) over the batch), the class-balance
  term of DAFL (Chen et al. 2019), an addition that is not in MEGA's spec;
- ``dfme``: a DFME/MAZE-style adversary: G maximises S's cross-entropy against the labels the
  target gave those queries (label-only: no gradient through the target is needed);
- ``random``: no generator; queries are uniform noise in [-1, 1].

S never sees more than the oracle's labels (attacks/stealing/oracle.py). ``evaluate`` (S ->
metrics) is called every ``eval_every`` queries and at the end; the rows are the curve against
queries. Written by hand: no library implements MEGA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.stealing.generator import Generator
from attacks.stealing.oracle import LabelOracle

METHODS = ("mega", "dfme", "random")
OBJECTIVES = ("entropy", "max-softmax")


@dataclass(frozen=True)
class StealConfig:
    method: str = "mega"
    batch_size: int = 128
    lr_substitute: float = 1e-3
    lr_generator: float = 1e-3
    objective: str = "entropy"  # mega's generator objective
    balance: float = 0.0  # mega: minus this x the entropy of the batch's mean prediction (not in the spec)
    replay_steps: int = 1  # extra substitute steps per query batch on queries already labelled (no new queries)
    eval_every: int = 2000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.batch_size < 1 or self.eval_every < 1 or self.replay_steps < 0 or self.balance < 0:
            raise ValueError("batch_size and eval_every must be >= 1, replay_steps and balance >= 0")


def generator_loss(method: str, objective: str, logits: torch.Tensor, labels: torch.Tensor,
                   balance: float = 0.0) -> torch.Tensor:
    """What the generator minimises, from the substitute's logits on its queries."""
    if method == "dfme":
        return -F.cross_entropy(logits, labels)
    p = logits.softmax(1)
    loss = -(p * logits.log_softmax(1)).sum(1).mean() if objective == "entropy" else -p.max(1).values.mean()
    if balance:
        mean = p.mean(0)
        loss = loss + balance * (mean * mean.clamp_min(1e-12).log()).sum()  # - balance x H(mean p)
    return loss


def steal(oracle: LabelOracle, substitute: nn.Module, shape: tuple[int, int, int], cfg: StealConfig, *,
          generator: torch.Generator, evaluate: Callable[[nn.Module], dict] | None = None,
          progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Spend the oracle's budget; returns one row per evaluation: queries used plus ``evaluate(S)``."""
    device = next(substitute.parameters()).device
    opt_s = torch.optim.Adam(substitute.parameters(), lr=cfg.lr_substitute)
    gen = Generator(shape).to(device) if cfg.method != "random" else None
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_generator) if gen is not None else None
    seen_x: list[torch.Tensor] = []
    seen_y: list[torch.Tensor] = []
    rows, next_eval = [], cfg.eval_every

    def record() -> None:
        row = {"queries": oracle.used, **(evaluate(substitute) if evaluate is not None else {})}
        rows.append(row)
        if progress is not None:
            progress(row)

    while oracle.left > 0:
        b = min(cfg.batch_size, oracle.left)
        if gen is None:
            z, x = None, (torch.rand((b, *shape), generator=generator) * 2 - 1).to(device)
        else:
            gen.eval()
            z = torch.randn(b, gen.z_dim, generator=generator).to(device)
            with torch.no_grad():
                x = gen(z)
        y = oracle(x.cpu()).to(device)
        seen_x.append(x.detach().cpu())
        seen_y.append(y.detach().cpu())
        substitute.train()
        _substitute_step(substitute, opt_s, x, y)
        for _ in range(cfg.replay_steps):
            pool_x, pool_y = torch.cat(seen_x), torch.cat(seen_y)
            pick = torch.randint(0, len(pool_y), (min(cfg.batch_size, len(pool_y)),), generator=generator)
            _substitute_step(substitute, opt_s, pool_x[pick].to(device), pool_y[pick].to(device))
        if gen is not None:
            gen.train()
            substitute.eval()
            loss_g = generator_loss(cfg.method, cfg.objective, substitute(gen(z)), y, cfg.balance)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            substitute.zero_grad(set_to_none=True)  # the generator's step leaves no gradient in S
        if oracle.used >= next_eval:
            record()
            next_eval += cfg.eval_every
    if not rows or rows[-1]["queries"] != oracle.used:
        record()
    return rows


def _substitute_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
