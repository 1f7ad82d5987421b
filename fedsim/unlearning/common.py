"""What the local unlearning objectives share: the data type, their hyper-parameters
(UnlearnParams, validated) and small PyTorch helpers (batches, noising, relabelling, steps).

A client holds a retain set D_r and a forget set D_f, each an (images (N, C, H, W)
in [-1, 1], labels (N,) int64) tuple that may have 0 rows. Every objective
(msgm.py, erasediff.py, salun.py, gradient_ascent.py) is plain PyTorch (no Flower),
takes all randomness (t, eps, shuffling) from its ``generator`` and builds a fresh
optimiser per call, like train.train_local.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fedsim.models.diffusion import NoiseSchedule

Data = tuple[torch.Tensor, torch.Tensor]  # (images (N, C, H, W), labels (N,))

_CHOICES = {
    "msgm_loss": ("orthogonal", "obtuse", "erase"),
    "msgm_orth_form": ("elementwise", "dot"),
    "msgm_obtuse_form": ("definition", "official-code", "hinge"),
    "erasediff_rule": ("fixed", "cosine", "bome"),
    "erasediff_target": ("uniform", "random-label"),
    "salun_relabel": ("shift", "random"),
}


@dataclass(frozen=True)
class UnlearnParams:
    """Hyper-parameters of the local unlearning objectives (config keys in brackets)."""

    msgm_loss: str = "orthogonal"  # orthogonal | obtuse | erase
    msgm_weight: float = 0.01  # L = (1 - w) L_g + w L_u
    msgm_every: int = 4  # L_u only on every N-th optimiser step (official code); 1: every step
    msgm_orth_form: str = "elementwise"  # elementwise (official code) | dot
    msgm_obtuse_form: str = "definition"  # definition | official-code | hinge
    msgm_margin: float = 0.2  # hinge: relu(cos + margin), zero once cos <= -margin (0 stops at orthogonal)
    erasediff_lambda: float = 0.1
    erasediff_rule: str = "fixed"  # fixed | cosine | bome
    erasediff_eta: float = 0.1
    erasediff_inner_passes: int = 2  # K passes of the shared Adam on f over D_f (f*, Adam state); 0: none
    erasediff_target: str = "uniform"  # uniform | random-label (conditional models only)
    salun_mask_ratio: float = 0.5  # share of weights kept trainable
    salun_beta: float = 1e-3  # weight of the retain MSE
    salun_relabel: str = "shift"  # shift: c' = (c+1) mod C | random: c' uniform over the other classes
    grad_clip: float = 1.0  # clip_grad_norm_ in every unlearning step (0: none)

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not 0.0 <= self.msgm_weight <= 1.0:
            raise ValueError(f"msgm_weight must be in [0, 1], got {self.msgm_weight}")
        if self.msgm_every < 1 or self.erasediff_inner_passes < 0:
            raise ValueError("msgm_every must be >= 1 and erasediff_inner_passes >= 0")
        if not 0.0 < self.salun_mask_ratio <= 1.0:
            raise ValueError(f"salun_mask_ratio must be in (0, 1], got {self.salun_mask_ratio}")
        if self.salun_beta < 0 or self.grad_clip < 0 or self.msgm_margin < 0:
            raise ValueError("salun_beta, grad_clip and msgm_margin must be >= 0")


# --- helpers ---

def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def is_conditional(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "num_class_embeds", None) is not None


def batch_of(data: Data, idx: torch.Tensor, device: torch.device) -> Data:
    return data[0][idx].to(device), data[1][idx].to(device)


def batches(n_main: int, n_other: int, batch_size: int,
           generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One shuffled pass over ``n_main`` rows in minibatches, each paired with a
    minibatch (size min(batch_size, n_other)) drawn cyclically from a shuffled
    other set; None where the other set is empty."""
    order = torch.randperm(n_main, generator=generator)
    other = torch.randperm(n_other, generator=generator) if n_other else None
    pos, m = 0, min(batch_size, n_other)
    for start in range(0, n_main, batch_size):
        if other is None:
            yield order[start:start + batch_size], None
            continue
        yield order[start:start + batch_size], other[(pos + torch.arange(m)) % n_other]
        pos = (pos + m) % n_other


def noisy(sched: NoiseSchedule, x: torch.Tensor, generator: torch.Generator,
           eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps) with t ~ U{0..T-1}, eps ~ N(0, I) unless given (eq. 4 of Ho et al.)."""
    t = torch.randint(0, sched.timesteps, (x.shape[0],), generator=generator).to(x.device)
    if eps is None:
        eps = torch.randn(x.shape, generator=generator).to(x.device)
    return sched.add_noise(x, eps, t), t, eps


def relabel(labels: torch.Tensor, num_classes: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """c' != c: (c + 1) mod C ("shift") or uniform over the other C - 1 classes ("random")."""
    if num_classes < 2:
        raise ValueError(f"relabelling needs at least 2 classes, got {num_classes}")
    if mode == "shift":
        return (labels + 1) % num_classes
    offset = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + offset) % num_classes


def step(model: nn.Module, opt: torch.optim.Optimizer, clip: float) -> None:
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||a - b||^2 / D."""
    return (a - b).pow(2).flatten(1).mean(1).mean()


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def set_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    pos = 0
    for p in params:
        p.grad = flat[pos:pos + p.numel()].view_as(p).clone()
        pos += p.numel()
