"""Shapley-value-based client selection: the SV baseline of the FedEMD paper.

Each round the server values the clients that took part by their Shapley value
in that round's aggregation (Shapley 1953; as a data value, Ghorbani & Zou
2019), with the utility U(S) = score of the global model after aggregating
only the updates of the coalition S (U of the empty coalition: the global
model as sent). A client's Shapley value is its average marginal contribution

    phi_i = sum_{S subset of N \\ {i}} |S|! (n - |S| - 1)! / n! * (U(S + i) - U(S)).

With n <= ``exact_up_to`` participants all 2^n coalitions are evaluated
(32 for the paper's 5 clients per round); above that, truncated Monte-Carlo
permutation sampling (TMC-Shapley, Ghorbani & Zou 2019) estimates it. Selection
then follows the running values in the manner of S-FedAvg (Nagalapatti &
Narayanam, AAAI 2021): v_i <- decay * v_i + (1 - decay) * phi_i for clients that
took part, P = (1 - explore) * softmax(v / temperature) + explore / n, k distinct
clients drawn with P. Clients never selected keep v = 0. Without the floor
``explore`` a client valued once below the others would almost never be drawn
again (values change only for selected clients), so one unlucky round could
starve it for the rest of the run; the floor keeps every client's chance at
least explore / n per draw, so values can recover. The utility is the server's evaluation score
(test accuracy for classifiers, minus the held-out loss for diffusion models),
so phi and ``temperature`` are in those units.

Written by hand: no maintained library values coalitions of model updates
(shap values features of one model's predictions, not training contributions).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.rng import derive
from strategies.client_registry import ClientInfo
from strategies.selection.selectors import Selector, softmax

Utility = Callable[[tuple[int, ...]], float]  # sorted member indices -> score


def exact_shapley(n: int, utility: Utility) -> np.ndarray:
    """phi (n,) by enumerating all 2^n coalitions (each evaluated once)."""
    value = {s: utility(s) for r in range(n + 1) for s in itertools.combinations(range(n), r)}
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for s in itertools.combinations(others, r):
                phi[i] += w * (value[tuple(sorted(s + (i,)))] - value[s])
    return phi


def tmc_shapley(n: int, utility: Utility, *, rng: np.random.Generator, permutations: int = 50,
                tolerance: float = 0.0) -> np.ndarray:
    """Truncated Monte-Carlo estimate: mean marginal contribution over random orders;
    a walk stops once U(prefix) is within ``tolerance`` of U(all) (the rest get 0)."""
    cache: dict[tuple[int, ...], float] = {}

    def u(members: tuple[int, ...]) -> float:
        if members not in cache:
            cache[members] = utility(members)
        return cache[members]

    full = u(tuple(range(n)))
    phi = np.zeros(n)
    for _ in range(permutations):
        prefix: list[int] = []
        prev = u(())
        for i in rng.permutation(n):
            if abs(full - prev) <= tolerance and prefix:
                break
            prefix.append(int(i))
            cur = u(tuple(sorted(prefix)))
            phi[i] += cur - prev
            prev = cur
    return phi / permutations


def shapley_values(n: int, utility: Utility, *, rng: np.random.Generator, exact_up_to: int = 8,
                   permutations: int = 50) -> np.ndarray:
    if n <= exact_up_to:
        return exact_shapley(n, utility)
    return tmc_shapley(n, utility, rng=rng, permutations=permutations)


@dataclass
class RoundContributions:
    """What a strategy hands a valuing selector after aggregation: the clients that
    were aggregated and U(coalition of their indices)."""

    clients: list[ClientInfo]
    utility: Utility


class ShapleySelector(Selector):
    name = "shapley"
    needs_contributions = True
    checkpointed = ("values", "last_phi")

    def __init__(self, *, decay: float = 0.75, temperature: float = 0.01, explore: float = 0.1, seed: int = 0,
                 exact_up_to: int = 8, permutations: int = 50) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"shapley decay must be in [0, 1), got {decay}")
        if temperature <= 0:
            raise ValueError(f"shapley temperature must be > 0, got {temperature}")
        if not 0 <= explore <= 1:
            raise ValueError(f"shapley explore must be in [0, 1], got {explore}")
        self.decay, self.temperature, self.explore, self.seed = decay, temperature, explore, seed
        self.exact_up_to, self.permutations = exact_up_to, permutations
        self.values: dict[int, float] = {}
        self.last_phi: dict[int, float] = {}

    def probabilities(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        v = np.array([self.values.get(c.partition_id, 0.0) for c in candidates])
        return (1 - self.explore) * softmax(v / self.temperature) + self.explore / len(candidates)

    def observe(self, server_round: int, contributions: RoundContributions) -> None:
        n = len(contributions.clients)
        if n == 0:
            return
        phi = shapley_values(n, contributions.utility, rng=derive(self.seed, "shapley", server_round),
                             exact_up_to=self.exact_up_to, permutations=self.permutations)
        self.last_phi = {c.partition_id: float(p) for c, p in zip(contributions.clients, phi)}
        for pid, p in self.last_phi.items():
            self.values[pid] = self.decay * self.values.get(pid, 0.0) + (1 - self.decay) * p
