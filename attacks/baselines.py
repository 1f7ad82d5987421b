"""Trivial reconstructions: what a score means only next to what guessing gets.

Each baseline returns as many images as the attack reconstructed, and the runner scores
them exactly as the attack (attacks/scoring.py: the same targets, the same assignment, the
same metric code), so a row ``baseline-mean`` beside an attack's row says how much of the
PSNR the attack owes to the update rather than to the domain:

- ``grey``: the mid-grey image (the centre of the value range, 0.5 on the [0, 1] scale);
- ``mean``: the mean image of the pool (the training images outside the targets);
- ``random``: images drawn from the pool without replacement (with, if the pool is smaller),
  from an explicit generator.
The pool never holds a target, so no baseline can copy the truth.
"""

from __future__ import annotations

import torch

BASELINES = ("grey", "mean", "random")


def baseline_images(kind: str, n: int, pool: torch.Tensor, value_range: tuple[float, float], *,
                    generator: torch.Generator) -> torch.Tensor:
    """(n, C, H, W) images of baseline ``kind`` in value_range; pool (M, C, H, W), M >= 1."""
    if kind == "grey":
        lo, hi = value_range
        return torch.full((n, *pool.shape[1:]), (lo + hi) / 2, dtype=pool.dtype)
    if kind == "mean":
        return pool.double().mean(0).to(pool.dtype).expand(n, *pool.shape[1:]).clone()
    if kind == "random":
        m = pool.shape[0]
        pick = torch.randperm(m, generator=generator)[:n] if m >= n else torch.randint(0, m, (n,), generator=generator)
        return pool[pick].clone()
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
