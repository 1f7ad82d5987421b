"""Gradient ascent's a_k: each requesting client's weight in the aggregation that produced
the model being unlearned, from the original run's ledger (fedsim/records/ledger.py).

The original run's global model is w = sum_i a_i w_i over the replies aggregated in its
last round, with a_i = n_i / sum_j n_j (``weighting = "samples"``) or 1 / |S|
(``"uniform"``), n_i the num-examples the ledger logged. The requesting client k gets its
a_k in the gradient-ascent round's TRAIN config and computes w_ref = (w - a_k w_k) / (1 - a_k)
(fedsim/unlearning/gradient_ascent.py).

Partial participation, which Halimi et al. do not have: a client that was not aggregated
in the last round gets a_k = 0, and its reference is w itself. That is exact, not a
fallback: w then is the weighted mean of the other clients' models. (k's earlier rounds
still shaped w; no reference built from one round's weights can take them out.) Each of
several requesting clients takes out its own model only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedsim.config import ConfigError, load_config, read_toml
from fedsim.records.ledger import Ledger
from fedsim.unlearning.gradient_ascent import SHARE_IDS, SHARES


def last_round_shares(ledger: Ledger, weighting: str, clients: Iterable[int]) -> dict[int, float]:
    """partition id -> a_k in the ledger's last round (0.0 for a client not aggregated in it)."""
    if not ledger.rounds:
        raise ConfigError(f"the ledger in {ledger.root} lists no round")
    last = ledger.participants(ledger.rounds[-1]["round"])
    if weighting == "uniform":
        weights = {p: 1.0 for p in last}
    elif weighting == "samples":
        weights = {p: float(n) for p, n in last.items()}
    else:
        raise ValueError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
    total = sum(weights.values())
    return {k: weights.get(k, 0.0) / total if total > 0 else 0.0 for k in sorted(set(clients))}


def original_weighting(run_dir: str, default: str) -> str:
    """The ``weighting`` the original run aggregated with (its config.toml), else ``default``."""
    path = Path(run_dir) / "config.toml"
    return load_config(read_toml(path)).weighting if path.is_file() else default


def share_config(shares: dict[int, float]) -> dict[str, list]:
    """The TRAIN config entries that carry the shares (fedsim.unlearning.gradient_ascent.own_share reads them)."""
    ids = sorted(shares)
    return {SHARE_IDS: ids, SHARES: [float(shares[k]) for k in ids]}
