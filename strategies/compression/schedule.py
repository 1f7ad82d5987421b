"""Dynamic client sampling: how many clients train in round t.

Ji et al. (2022) let the sampled fraction decay over rounds; DHQ-DS (Jiang et
al. 2022) pairs it with compression. With K = clients-per-round (N * C_0 in the
paper's notation) and t = 1, 2, ...:

- constant:     K_t = K
- exponential:  K_t = max(K_min, ceil(K exp(-decay (t - 1))))
- linear:       K_t = max(K_min, ceil(K (1 - decay (t - 1))))

The schedule only says how many; who is still the selector's choice (random,
FedEMD, Shapley), so both combine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    clients: int = 10
    decay: float = 0.0
    minimum: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "exponential", "linear"):
            raise ValueError(f"sampling must be constant, exponential or linear, got {self.kind!r}")
        if not 1 <= self.minimum <= self.clients:
            raise ValueError(f"sampling-min must be in 1..{self.clients}, got {self.minimum}")

    def __call__(self, server_round: int) -> int:
        t = max(server_round - 1, 0)
        if self.kind == "exponential":
            k = math.ceil(self.clients * math.exp(-self.decay * t))
        elif self.kind == "linear":
            k = math.ceil(self.clients * (1.0 - self.decay * t))
        else:
            return self.clients
        return min(self.clients, max(self.minimum, k))
