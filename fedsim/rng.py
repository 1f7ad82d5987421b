"""Seeded generators derived from (seed, purpose, *keys).

Ray reuses worker processes and runs clients in any order, so global seeding
cannot reproduce a run; every random draw instead comes from a generator
derived from the run seed, a purpose string and integer keys (round, client).
``hash()`` is salted per process, so the purpose is hashed with crc32.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """numpy Generator for one purpose, e.g. ``derive(seed, "select", rnd)``."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode()), *map(int, keys)])


def torch_generator(seed: int, purpose: str, *keys: int, device: str = "cpu") -> torch.Generator:
    """torch Generator seeded from :func:`derive`."""
    g = torch.Generator(device=device)
    g.manual_seed(int(derive(seed, purpose, *keys).integers(2**62)))
    return g
