"""Client selectors: who trains in a round, and nothing else.

A selector plugs into any aggregation strategy through its selection hook
(``FedAvg.select`` here): the strategy asks for k of the connected clients and
keeps aggregating as before. Every draw comes from the generator the strategy
passes in, derived from (seed, "select", round), so a seed fixes who trained in
every round.

- ``RandomSelector``: k distinct clients uniformly (the FedAvg baseline).
- ``ReplaySelector``: the participants a ledger lists per round (retraining).
- ``FedEMDSelector``: FedEMD (Huang et al., "Maverick Matters", PAKDD 2023),
  with the fixes listed in shared/papers/fedemd.md. Round t (from 1):

      EMD_g[i] = d(p_i, p_glob)          p_glob: summed histograms of all clients
      EMD_c[i] = d(p_i, p_cur(t))        p_cur: summed histograms of the clients
                                         selected in rounds < t (0 while empty)
      P_t      = softmax(alpha * EMD_g - t * beta * EMD_c)
      S_t      = k distinct clients drawn with weights P_t

  The first term prefers clients far from the global distribution (Mavericks),
  the second, growing with t, pulls selection back toward what the model has
  already been trained on. Drawing k distinct indices one after another with
  weights P_t (numpy ``choice(replace=False, p=P_t)``) has the same law as the
  authors' A-Res reservoir sampler but cannot return a client twice (their
  sampler maps keys back to clients by probability value, so equal-probability
  clients collide). ``distance`` picks the label distance (strategies/selection/emd.py);
  ``scipy-values`` reproduces the authors' scores (profiles divided by the last
  class's count, p_glob = ones, raw cumulative counts).

Selectors see only what clients declared once (ClientInfo: partition id, size,
label histogram); ``probabilities`` is what the run logs per round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.client_registry import ClientInfo
from strategies.selection.emd import DISTANCES, label_distance


def softmax(score: np.ndarray) -> np.ndarray:
    z = np.exp(score - score.max())  # shifted: no overflow
    return z / z.sum()


class Selector:
    """Base: subclasses give ``probabilities``; ``select`` draws k distinct clients."""

    name = "base"
    needs_contributions = False  # True: observe() gets RoundContributions after aggregation
    checkpointed: tuple[str, ...] = ()  # state that outlives a round (fedsim/records/checkpoint.py)

    def probabilities(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        raise NotImplementedError

    def eligible(self, server_round: int, client: ClientInfo) -> bool:
        """Whether a connected client may be drawn this round (by default: it has data to train on)."""
        return client.num_examples > 0

    def select(self, server_round: int, candidates: Sequence[ClientInfo], k: int,
               rng: np.random.Generator) -> list[ClientInfo]:
        """k distinct candidates (fewer if fewer are connected), ordered by partition id."""
        p = self.probabilities(server_round, candidates)
        k = min(k, len(candidates), int(np.count_nonzero(p)))
        idx = rng.choice(len(candidates), size=k, replace=False, p=p)
        chosen = [candidates[i] for i in sorted(idx)]
        self.selected(server_round, chosen)
        return chosen

    def selected(self, server_round: int, chosen: Sequence[ClientInfo]) -> None:
        """Bookkeeping after a draw (FedEMD's cumulative histogram)."""

    def observe(self, server_round: int, contributions) -> None:
        """After aggregation: what each client's update did (Shapley-based selection)."""


class RandomSelector(Selector):
    name = "random"

    def probabilities(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        return np.full(len(candidates), 1.0 / len(candidates))

    def select(self, server_round: int, candidates: Sequence[ClientInfo], k: int,
               rng: np.random.Generator) -> list[ClientInfo]:
        k = min(k, len(candidates))
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]


class FedEMDSelector(Selector):
    name = "fedemd"
    checkpointed = ("cum",)

    def __init__(self, clients: Sequence[ClientInfo], *, alpha: float = 0.41, beta: float = 0.41 / 110,
                 distance: str = "categorical-l1", cum_init: Sequence[float] | None = None) -> None:
        """clients: every client of the federation (p_glob comes from all their histograms).
        cum_init: initial cumulative counts (default zeros; the authors used ones with 50
        for class 1)."""
        if distance not in DISTANCES:
            raise ValueError(f"unknown FedEMD distance {distance!r}; known: {', '.join(DISTANCES)}")
        if not clients:
            raise ValueError("FedEMD needs the clients' label histograms; none were declared")
        hists = np.stack([np.asarray(c.label_hist, dtype=np.float64) for c in clients])
        self.alpha, self.beta, self.distance = float(alpha), float(beta), distance
        num_classes = hists.shape[1]
        self.cum = np.zeros(num_classes) if cum_init is None else np.array(cum_init, dtype=np.float64)  # a copy
        if self.cum.shape != (num_classes,) or np.any(self.cum < 0):
            raise ValueError(f"cum_init must hold {num_classes} non-negative counts, got {list(self.cum)}")
        # p_glob: the authors hard-code ones; the corrected modes derive it from the histograms.
        self.glob = np.ones(num_classes) if distance == "scipy-values" else hists.sum(axis=0)
        self.emd_g = dict(zip((c.partition_id for c in clients), label_distance(distance, hists, self.glob)))

    def scores(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        """alpha * EMD_g - t * beta * EMD_c for each candidate."""
        hists = np.stack([np.asarray(c.label_hist, dtype=np.float64) for c in candidates])
        emd_g = np.array([self.emd_g[c.partition_id] for c in candidates])  # candidates declared at start
        # Nothing selected yet: no current distribution to compare with (EMD_c = 0).
        emd_c = label_distance(self.distance, hists, self.cum) if self.cum.sum() > 0 else np.zeros(len(hists))
        return self.alpha * emd_g - server_round * self.beta * emd_c

    def probabilities(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        return softmax(self.scores(server_round, candidates))

    def selected(self, server_round: int, chosen: Sequence[ClientInfo]) -> None:
        for c in chosen:
            self.cum += np.asarray(c.label_hist, dtype=np.float64)


class ReplaySelector(Selector):
    """The participants a ledger lists for each round (fedsim/records/ledger.py), minus
    those no longer connected or left without data: FedRetrain's replay of the
    original schedule. Draws nothing."""

    name = "replay"

    def __init__(self, schedule: dict[int, set[int]]) -> None:
        self.schedule = schedule

    def probabilities(self, server_round: int, candidates: Sequence[ClientInfo]) -> np.ndarray:
        wanted = self.schedule.get(server_round, set())
        hits = np.array([c.partition_id in wanted for c in candidates], dtype=float)
        return hits / hits.sum() if hits.sum() else np.full(len(candidates), 1.0 / max(len(candidates), 1))

    def select(self, server_round: int, candidates: Sequence[ClientInfo], k: int,
               rng: np.random.Generator) -> list[ClientInfo]:
        wanted = self.schedule.get(server_round, set())
        return sorted((c for c in candidates if c.partition_id in wanted), key=lambda c: c.partition_id)
